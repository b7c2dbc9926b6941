"""Exact resume: the training loader's batch counter and the process's random generators in checkpoints.

Together with :mod:`msadkit.data.resumable_loader` (order and augmentation a function of the batch
counter alone), a resumed run repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from msadkit.data.resumable_loader import ResumableLoader

__all__ = ["ExactResume", "capture_rng", "restore_rng", "RNG_CHECKPOINT_KEY"]

RNG_CHECKPOINT_KEY = "msadkit_rng"


def capture_rng() -> dict[str, Any]:
    """The state of Python's, numpy's and torch's (CPU and, when in use, CUDA) global generators."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # Plain types and tensors only: checkpoints are read with torch.load(weights_only=True).
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gauss)],
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo to a :func:`capture_rng` state (CUDA only when the device count matches)."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.random.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)



class ExactResume(L.Callback):
    """Advances the training loader's batch counter (a :class:`ResumableLoader`) and keeps the
    training process's RNG in checkpoints.

    The generators are captured when a checkpoint is written (after the batch it follows) and set
    back before the first batch of the resumed run, past everything that setting up the run drew.
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last), so the
        # checkpoint written after this batch counts it.
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.batches_done += 1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RNG_CHECKPOINT_KEY] = capture_rng()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get(RNG_CHECKPOINT_KEY)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None
