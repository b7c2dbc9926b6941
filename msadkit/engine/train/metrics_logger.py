"""Per-iteration metrics: one hook that collects them, and the JSON-lines file of the run folder."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from msadkit.utils.atomic import disk_full_error, write_text_atomic

__all__ = ["PeriodicMetrics", "MetricsJsonlLogger", "append_record", "read_metrics", "mean_over_ranks"]

TRAIN_PREFIX = "train/"


def mean_over_ranks(trainer: L.Trainer, values: dict[str, float]) -> dict[str, float]:
    """``values`` averaged over the processes of a distributed run (unchanged in a single process).

    A collective: every rank calls it at the same iteration, with the same keys (the same model
    gives every rank the same loss terms). The sum is taken in float64, so the mean of a single
    process's value is that value exactly.
    """
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    # NCCL reduces tensors on the GPU only: the strategy's device is the one every rank can use.
    stacked = torch.tensor([values[key] for key in keys], dtype=torch.float64, device=trainer.strategy.root_device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    means = dict(zip(keys, (stacked / trainer.world_size).tolist()))
    # The record keeps the order the training step logged them in.
    return {key: means[key] for key in values}


class PeriodicMetrics(L.Callback):
    """Collects the training metrics every ``period`` iterations (and at the last).

    A record holds ``iter`` (the global step after the update), ``time`` (seconds of training
    since the run started, resumed runs included: the time at the checkpoint is kept in it),
    ``lr`` (the learning rate of that update) and every value the training step logged under
    ``train/``, averaged over the processes of a DDP run (non-finite values as strings).
    Subclasses decide what to do with it in :meth:`report`, which runs on rank 0 only.
    """

    def __init__(self, period: int = 20) -> None:
        super().__init__()
        self.period = max(1, int(period))
        self._start = time.perf_counter()
        # Training seconds before this fit started: those of the checkpoint a resumed run loads.
        self._elapsed_before = 0.0

    def elapsed(self) -> float:
        """Seconds of training so far, earlier (resumed) fits included."""
        return self._elapsed_before + time.perf_counter() - self._start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._elapsed_before = float(state_dict.get("elapsed", 0.0))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The scheduler steps before on_train_batch_end; the record's lr is the one its loss was
        # computed and its update made with.
        self._step_lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.period != 0 and step != trainer.max_steps:
            return
        local = {
            key[len(TRAIN_PREFIX):]: float(value.item() if isinstance(value, torch.Tensor) else value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(TRAIN_PREFIX)
        }
        # Every rank takes part; the training step logs each rank's own losses.
        values = mean_over_ranks(trainer, local)
        if not trainer.is_global_zero:
            return
        record: dict[str, Any] = {"iter": step, "time": round(self.elapsed(), 3)}
        record["lr"] = getattr(self, "_step_lr", trainer.optimizers[0].param_groups[0]["lr"])
        for key, number in values.items():
            record[key] = number if math.isfinite(number) else str(number)
        self.report(trainer, record)

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        raise NotImplementedError


class MetricsJsonlLogger(PeriodicMetrics):
    """Appends one JSON object per report to ``path`` (the run folder's ``metrics.jsonl``) and sends
    the same losses to the run's loggers (``train/<name>``) at step ``iter``.

    The training step logs to Lightning with ``logger=False``: this is the one place the loggers
    get the training losses, so they see the values (and steps) of ``metrics.jsonl``, not rank 0's
    alone. Call :meth:`start` before training, so the file holds each iteration once.
    """

    def __init__(self, path: str | Path, period: int = 20) -> None:
        super().__init__(period)
        self.path = Path(path)

    def start(self, resume_step: int | None) -> None:
        """Prepare the file for a run: empty for a fresh run; for a run resumed from the checkpoint
        of iteration ``resume_step``, the records up to that iteration only.

        A process killed after its last checkpoint logged iterations that the resumed run trains
        again; their records (and a line cut short by the kill) are dropped, atomically. The
        ``time`` of the last kept record is where the resumed run's clock starts when the
        checkpoint does not hold its training time (one written before it did).
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
                    if isinstance(record.get("time"), (int, float)):
                        self._elapsed_before = float(record["time"])
        write_text_atomic(self.path, "".join(kept))

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        append_record(self.path, record)
        # float() reads back the "nan"/"inf" strings of non-finite losses.
        losses = {
            f"{TRAIN_PREFIX}{key}": float(value) for key, value in record.items() if key not in ("iter", "time", "lr")
        }
        for run_logger in trainer.loggers:
            run_logger.log_metrics(losses, step=record["iter"])
            # What Lightning does after logging: CSV rows reach the disk, TensorBoard flushes.
            run_logger.save()


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line (the training rows, and the validation rows of
    ``msadkit.engine.train.validation``); NaN is written as ``NaN``, as in ``eval.json``.

    A write that fails part-way (a full disk) is cut back off, so the file never ends in half a
    line; a full disk raises :class:`msadkit.utils.atomic.DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            os.ftruncate(fd, size)
            full = disk_full_error(exc, path)
            if full is None:
                raise
            raise full from exc
    finally:
        os.close(fd)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
