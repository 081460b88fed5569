"""The guard callback: a training run stops cleanly on SIGINT/SIGTERM and on a non-finite loss.

    Guard(checkpoints, ...)   Composer callback. A signal during fit is only recorded (rafale/signals.py);
                              at the next batch end the run stops with `Interrupted` (run.py then saves a
                              checkpoint). A NaN/Inf loss stops it with `TrainingDiverged` before that batch
                              can be checkpointed; on a batch that will be checkpointed the weights are
                              checked too, so a saved checkpoint is always finite.

Exit codes (rafale/cli.py): a diverged run is a TrainingDiverged (a RafaleError: usually the config's
learning rate or warmup), so exit 2; an interrupted run exits 128 + the signal (130 for SIGINT, 143 for
SIGTERM), as a shell would report it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch
from composer.core import Callback, Event
from composer.utils.misc import create_interval_scheduler

from rafale import signals
from rafale.errors import Interrupted, RafaleError
from rafale.train.checkpoints import latest_checkpoint


class TrainingDiverged(RafaleError):
    """The training loss (or a weight about to be saved) became NaN or Inf. A RafaleError: the usual cause
    is the config (learning rate, warmup, precision), and the message says what to change."""


def resume_command() -> str:
    """The command line that continues this run: the same one, without --force / FORCE=1."""
    args = [a for a in sys.argv[1:] if a not in ("--force", "--verbose")]
    return " ".join(shlex.quote(a) for a in ["rafale", *args])


class Guard(Callback):
    """Stops training at a batch end on SIGINT/SIGTERM, and on a non-finite loss or saved weight."""

    def __init__(self, checkpoints: Path, save_interval: str, lr: float):
        self.checkpoints, self.save_interval, self.lr = Path(checkpoints), save_interval, lr
        self.will_save = create_interval_scheduler(save_interval)  # the same rule as Composer's saver

    def fit_start(self, state, logger) -> None:
        signals.defer(True)

    def close(self, state, logger) -> None:
        signals.defer(False)

    def batch_end(self, state, logger) -> None:  # before Event.BATCH_CHECKPOINT: a bad step is never saved
        losses = state.loss if isinstance(state.loss, (list, tuple)) else [state.loss]
        loss = torch.stack([l.detach().float().mean() for l in losses]).sum()
        if not torch.isfinite(loss):
            self.diverged(state, f"the training loss became {float(loss)}")
        signum = signals.pending()
        if (signum is not None or self.will_save(state, Event.BATCH_CHECKPOINT)) and not all_finite(state.model):
            self.diverged(state, "a weight became NaN or Inf")
        if signum is not None:
            e = Interrupted(signum)
            e.at_batch_end = True  # the state is whole: run.py may checkpoint it
            raise e

    def epoch_end(self, state, logger) -> None:  # before Event.EPOCH_CHECKPOINT
        if not all_finite(state.model):
            self.diverged(state, "a weight became NaN or Inf")

    def diverged(self, state, what: str) -> None:
        step = state.timestamp.batch.value
        last = latest_checkpoint(self.checkpoints)
        kept = (f"the last good checkpoint {last} is kept" if last is not None
                else f"no checkpoint was saved before it (run.save_interval {self.save_interval})")
        raise TrainingDiverged(f"optim.lr: {what} at step {step}; training stopped there and {kept}; lower "
                               f"optim.lr (now {self.lr:g}) or lengthen optim.warmup, then FORCE=1 to start over")


def all_finite(model: torch.nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


def saved_on_interrupt(trainer, folder: Path) -> Path | None:
    """Save the state at the batch where the run stopped, through Composer's checkpoint saver (so the
    `latest` link and the rotation stay right). None when it could not be saved: the checkpoint of the
    last interval is then still the latest."""
    before = latest_checkpoint(folder)
    try:
        trainer.save_checkpoint_to_save_folder()
    except Exception:
        return None
    after = latest_checkpoint(folder)
    return after if after != before else None
