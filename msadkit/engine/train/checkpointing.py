"""The run's checkpoints: ``checkpoints/iter_step=NNNNNNN.ckpt`` every ``trainer.checkpoint_period``
iterations (the newest ``trainer.keep_checkpoints`` of them kept) and ``checkpoints/last.ckpt``,
the one ``--resume`` starts from; and the checkpoint of the iteration a stop signal ends.

Both files are written through the trainer (``AtomicCheckpointIO``: a temporary file, then a
rename), the iteration file first, so a process killed between the two leaves a complete
iteration file newer than ``last.ckpt``, which ``--resume`` takes.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from msadkit.engine.train.graceful_stop import StopSignals, TrainingInterrupted, agreed_stop_signal
from msadkit.errors import ConfigError

__all__ = ["IterationCheckpoint", "iteration_checkpoint_name", "iteration_checkpoints", "check_keep_checkpoints"]

logger = logging.getLogger(__name__)

LAST_NAME = "last.ckpt"
_ITERATION_FILE = re.compile(r"iter_step=(\d+)\.ckpt")


def iteration_checkpoint_name(step: int) -> str:
    """``iter_step=0000123.ckpt``: the periodic checkpoint of iteration ``step``."""
    return f"iter_step={step:07d}.ckpt"


def iteration_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the periodic checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _ITERATION_FILE.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def check_keep_checkpoints(config: dict[str, Any]) -> int:
    """``trainer.keep_checkpoints``, checked: a positive count."""
    keep = config["trainer"]["keep_checkpoints"]
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"trainer.keep_checkpoints must be a positive number of checkpoints, got {keep!r}")
    return keep


class IterationCheckpoint(Checkpoint):
    """Writes the periodic checkpoints, keeps the newest ``keep`` and stops on SIGTERM/SIGINT.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs its hooks after every
    other callback's: the checkpoint written after a batch holds what they did with it (the loader
    position of ``ExactResume``). While training runs, SIGTERM and SIGINT only raise a flag
    (:mod:`msadkit.engine.train.graceful_stop`); after the iteration in which a rank saw one, every
    rank stops: this iteration's checkpoints are written, as a periodic one would be, and
    :class:`TrainingInterrupted` is raised (after the validation of that iteration, when one is
    due, so its row and ``model_best.pth`` are not lost).

    Args:
        dirpath: the run's ``checkpoints`` folder.
        period: iterations between periodic checkpoints (``trainer.checkpoint_period``).
        keep: periodic checkpoints kept, the newest (``trainer.keep_checkpoints``, at least 1).
        eval_period: ``trainer.eval_period`` (0: no validation during training).
    """

    def __init__(self, dirpath: str | Path, period: int, keep: int, eval_period: int = 0) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.period = max(1, int(period))
        self.keep = int(keep)
        self.eval_period = int(eval_period)
        self.signals = StopSignals()
        self._last_saved: int | None = None
        self._stop_after_validation: int | None = None

    # Saving and pruning ----------------------------------------------------------------------------

    def save(self, trainer: L.Trainer, *, iteration_file: bool = True) -> None:
        """Write the checkpoints of the current iteration, ``last.ckpt`` alone without
        ``iteration_file`` (on every rank: saving synchronises them)."""
        step = trainer.global_step
        if iteration_file:
            trainer.save_checkpoint(self.dirpath / iteration_checkpoint_name(step), weights_only=False)
        trainer.save_checkpoint(self.dirpath / LAST_NAME, weights_only=False)
        self._last_saved = step
        if trainer.is_global_zero:
            self.prune(step)

    def prune(self, step: int) -> list[Path]:
        """Remove the periodic checkpoints beyond the newest ``keep`` up to ``step``, and those of
        iterations after ``step``: a resumed run trains those again (they are files a killed
        process cut short, or the run would have resumed from them). Returns the removed files."""
        files = iteration_checkpoints(self.dirpath)
        later = [path for s, path in files if s > step]
        done = [path for s, path in files if s <= step]
        stale = later + done[: -self.keep]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    # Hooks -----------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, after Lightning set its own SIGTERM handler for the fit.
        self.signals.install()
        self._stop_after_validation = None
        if trainer.is_global_zero:
            removed = self.prune(trainer.global_step)
            if removed:
                logger.info("removed superseded checkpoints: %s", ", ".join(p.name for p in removed))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        signum = agreed_stop_signal(trainer, self.signals.received)
        if step % self.period == 0 or signum is not None:
            self.save(trainer)
        if signum is None:
            return
        if self.eval_period > 0 and step % self.eval_period == 0:
            # Lightning validates after this hook; a resumed run would skip that validation.
            self._stop_after_validation = signum
            return
        raise self._interrupted(trainer, signum)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_after_validation is not None and not trainer.sanity_checking:
            raise self._interrupted(trainer, self._stop_after_validation)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last iteration when no periodic checkpoint was ever written (what Lightning's
        # ModelCheckpoint(save_last=True) did), or when a signal came during its validation.
        signum = agreed_stop_signal(trainer, self.signals.received)
        if signum is not None and self._last_saved != trainer.global_step:
            self.save(trainer)
        elif self._last_saved is None:
            self.save(trainer, iteration_file=False)
        self.signals.restore()
        if signum is not None:
            raise self._interrupted(trainer, signum)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.signals.restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signals.restore()

    def _interrupted(self, trainer: L.Trainer, signum: int) -> TrainingInterrupted:
        self.signals.restore()
        return TrainingInterrupted(
            signum, trainer.global_step, trainer.max_steps, str(self.dirpath / LAST_NAME), trainer.is_global_zero
        )
