"""Make every DDP process end training with the model that rank 0 saves."""

from __future__ import annotations

import lightning as L
import torch.distributed as dist

__all__ = ["BroadcastBuffersAtEnd"]


class BroadcastBuffersAtEnd(L.Callback):
    """Broadcast rank 0's buffers (BatchNorm statistics) to all processes when training ends.

    DDP keeps parameters in sync, but each process updates its BatchNorm running statistics from
    its own batches; DDP only broadcasts rank 0's buffers at the start of the next forward. Placed
    first among the callbacks, this runs before any other ``on_train_end`` hook sees the model.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in pl_module.buffers():
                dist.broadcast(buffer.data, src=0)
