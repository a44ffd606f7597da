"""cnnlab: train CNN image classifiers the right way, and show why.

Importing this package is instant on purpose: submodules (and torch, optuna, timm,
matplotlib) are imported where they are used.
"""

__version__ = "0.1.0"
