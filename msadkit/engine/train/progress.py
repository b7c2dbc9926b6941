"""The training progress bar: one bar over the run's iterations.

A run is iteration-based (``solver.max_iter``; the Trainer gets ``max_epochs=-1``), so Lightning's
bar, one per epoch and titled ``Epoch 19/-2``, says nothing useful. This one counts the global
step up to ``max_iter``, continues where a resumed run starts, and shows the losses of the
training step (this process's values).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["IterationProgressBar"]


class IterationProgressBar(TQDMProgressBar):
    """``train: 12%|█▏ | 37/300 [00:12<01:30, 2.9it/s, train/loss=1.23]``; validation keeps Lightning's bar."""

    @property
    def train_description(self) -> str:
        return "train"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        # initial: the rate and the time left count this run's iterations only.
        bar.initial = bar.n = trainer.global_step
        if not bar.disable:
            bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # One bar for the whole run: nothing restarts with an epoch.
        pass

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar.disable or not self._should_update(step, bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        # The logger's version number ("v_num") is not a training metric.
        items.pop("v_num", None)
        return items
