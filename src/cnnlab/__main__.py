"""`python -m cnnlab` (also what `torchrun -m cnnlab` runs)."""

from cnnlab.cli.main import main

raise SystemExit(main())
