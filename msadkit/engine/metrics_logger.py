"""Per-iteration metrics: one hook that collects them, and the JSON-lines file of the run folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["PeriodicMetrics", "MetricsJsonlLogger", "read_metrics"]


class PeriodicMetrics(L.Callback):
    """Collects the training metrics every ``period`` iterations (and at the last) on rank 0.

    A record holds ``iter`` (the global step after the update), ``time`` (seconds since the fit
    started), ``lr`` and every value the training step logged under ``train/`` (non-finite values as
    strings). Subclasses decide what to do with it in :meth:`report`.
    """

    def __init__(self, period: int = 20) -> None:
        super().__init__()
        self.period = max(1, int(period))
        self._start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (step % self.period != 0 and step != trainer.max_steps):
            return
        record: dict[str, Any] = {"iter": step, "time": round(time.perf_counter() - self._start, 3)}
        record["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):
                number = float(value.item() if isinstance(value, torch.Tensor) else value)
                record[key[len("train/"):]] = number if math.isfinite(number) else str(number)
        self.report(trainer, record)

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        raise NotImplementedError


class MetricsJsonlLogger(PeriodicMetrics):
    """Appends one JSON object per report to ``path`` (the run folder's ``metrics.jsonl``)."""

    def __init__(self, path: str | Path, period: int = 20) -> None:
        super().__init__(period)
        self.path = Path(path)

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
