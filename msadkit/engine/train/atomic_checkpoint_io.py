"""Lightning checkpoint IO that never leaves a half-written checkpoint."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from msadkit.utils.checkpoint import save_atomic

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves through :func:`msadkit.utils.checkpoint.save_atomic` (temp file, then rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        save_atomic(checkpoint, path)
