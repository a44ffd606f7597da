"""The exception types users see.

Every error a user can cause (a bad path, a corrupt file, an unknown name, a NaN loss)
is raised as :class:`CnnlabError` with a message that names the thing and the fix. The
CLI prints it on one or two lines and exits non-zero, without a traceback. Failures that
callers handle (a diverged trial is a result of a search, not a crash) get a subclass
with the facts as attributes, so they are caught by type, never by message text.
"""

from __future__ import annotations

from pathlib import Path


class CnnlabError(Exception):
    """A user-facing error whose message names the problem and how to fix it.

    The CLI exits with ``exit_code``: 1 for a failure while working (a diverged run, a
    corrupt file), 2 for input it refuses before working (see :class:`UsageError`).
    """

    exit_code: int = 1


class UsageError(CnnlabError):
    """Input the user typed is refused: a flag or config value out of range, a malformed
    ``--data`` spec, an output path that would destroy something. The CLI exits with 2,
    as argparse does for a bad flag, and nothing has been written yet.
    """

    exit_code = 2


class TrainingDiverged(CnnlabError):
    """The training or validation loss became NaN or infinite.

    Attributes:
        epoch: the epoch it happened in, 0-based as in ``metrics.jsonl`` (the message
            shows it 1-based, like the epoch lines).
        step: the global optimisation step reached (steps taken since the run began).
        lr: the learning rate of the last step.
        split: ``"training"`` or ``"validation"``: whose loss was not finite.
        checkpoint: the last good checkpoint (``last.pt``), None when there is none yet.
    """

    def __init__(self, epoch: int, step: int, lr: float, *, split: str = "training",
                 checkpoint: str | Path | None = None) -> None:  # fmt: skip
        self.epoch, self.step, self.lr, self.split = epoch, step, lr, split
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        last = f"; the last good checkpoint is {self.checkpoint}" if self.checkpoint is not None else ""
        super().__init__(
            f"the {split} loss became NaN/inf in epoch {epoch + 1}, step {step} (lr {lr:.3g}): "
            f"the learning rate is probably too high; run `cnnlab lr-find` or lower --lr{last}"
        )
