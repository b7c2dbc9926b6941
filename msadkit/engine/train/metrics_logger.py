"""Per-iteration metrics: one hook that collects them, and the JSON-lines file of the run folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from msadkit.utils.atomic import write_text_atomic

__all__ = ["PeriodicMetrics", "MetricsJsonlLogger", "append_record", "read_metrics"]


class PeriodicMetrics(L.Callback):
    """Collects the training metrics every ``period`` iterations (and at the last) on rank 0.

    A record holds ``iter`` (the global step after the update), ``time`` (seconds since the fit
    started), ``lr`` (the learning rate of that update) and every value the training step logged under ``train/`` (non-finite values as
    strings). Subclasses decide what to do with it in :meth:`report`.
    """

    def __init__(self, period: int = 20) -> None:
        super().__init__()
        self.period = max(1, int(period))
        self._start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # The scheduler steps before on_train_batch_end; the record's lr is the one its loss was
        # computed and its update made with.
        self._step_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or (step % self.period != 0 and step != trainer.max_steps):
            return
        record: dict[str, Any] = {"iter": step, "time": round(time.perf_counter() - self._start, 3)}
        record["lr"] = getattr(self, "_step_lr", trainer.optimizers[0].param_groups[0]["lr"])
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):
                number = float(value.item() if isinstance(value, torch.Tensor) else value)
                record[key[len("train/"):]] = number if math.isfinite(number) else str(number)
        self.report(trainer, record)

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        raise NotImplementedError


class MetricsJsonlLogger(PeriodicMetrics):
    """Appends one JSON object per report to ``path`` (the run folder's ``metrics.jsonl``).

    Call :meth:`start` before training, so the file holds each iteration once.
    """

    def __init__(self, path: str | Path, period: int = 20) -> None:
        super().__init__(period)
        self.path = Path(path)

    def start(self, resume_step: int | None) -> None:
        """Prepare the file for a run: empty for a fresh run; for a run resumed from the checkpoint
        of iteration ``resume_step``, the records up to that iteration only.

        A process killed after its last checkpoint logged iterations that the resumed run trains
        again; their records (and a line cut short by the kill) are dropped, atomically.
        """
        kept = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("iter"), int) and record["iter"] <= resume_step:
                    kept.append(line + "\n")
        write_text_atomic(self.path, "".join(kept))

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        append_record(self.path, record)


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line (the training rows, and the validation rows of
    ``msadkit.engine.train.validation``); NaN is written as ``NaN``, as in ``eval.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
