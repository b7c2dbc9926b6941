"""Validation during training: COCO AP every ``trainer.eval_period`` iterations, and the best weights.

Lightning's validation loop runs the model over the validation split on every rank (each rank
sees its share of the images through the distributed sampler); :class:`PeriodicValidation`
collects the detections of each rank as COCO result entries, gathers them on rank 0, and scores
them there with one COCO evaluation (``trainer.eval_backend``). Rank 0 then

- appends ``{"iter": i, "val/AP": ..., "val/AP50": ..., "val/AP75": ..., "val/APs": ...,
  "val/APm": ..., "val/APl": ...}`` to ``metrics.jsonl`` (NaN where the split has no object of
  that size, as in ``eval.json``),
- sends the same values to the run's loggers at step ``i``,
- writes ``model_best.pth`` (``{"model": state_dict, "config": config}``, the layout of
  ``model_final.pth``) atomically whenever ``val/AP`` beats every earlier evaluation of the run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.distributed as dist
from torch import nn

from msadkit.engine.evaluation.coco_evaluation import AP_KEYS, check_backend, coco_evaluate
from msadkit.engine.inference.coco_results import detections_to_coco
from msadkit.engine.inference.detect import evaluation_category_ids
from msadkit.engine.train.metrics_logger import append_record, read_metrics
from msadkit.errors import ConfigError
from msadkit.utils.checkpoint import save_atomic

__all__ = [
    "BEST_WEIGHTS_NAME",
    "VALIDATION_PREFIX",
    "check_validation_config",
    "validation_schedule",
    "validation_rows",
    "PeriodicValidation",
]

logger = logging.getLogger(__name__)

BEST_WEIGHTS_NAME = "model_best.pth"
"""The run folder's weights of the evaluation with the highest ``val/AP`` (next to ``model_final.pth``)."""

VALIDATION_PREFIX = "val/"
"""Prefix of the validation metrics in ``metrics.jsonl`` rows and in the loggers."""


def check_validation_config(config: dict[str, Any]) -> None:
    """Refuse a ``trainer.eval_period`` or ``trainer.eval_backend`` that cannot work, before a run starts.

    Raises:
        ConfigError: a negative period, a period larger than ``solver.max_iter`` (no evaluation
            would ever run), or an unknown backend.
        MsadkitError: ``faster_coco_eval`` is selected but not installed (names the extra).
    """
    period = config["trainer"]["eval_period"]
    max_iter = config["solver"]["max_iter"]
    if period < 0:
        raise ConfigError(f"trainer.eval_period must be 0 (off) or a positive number of iterations, got {period}")
    if period > max_iter:
        raise ConfigError(
            f"trainer.eval_period ({period}) is larger than solver.max_iter ({max_iter}), so no evaluation "
            f"would run during training; use a value <= {max_iter}, or 0 to evaluate only at the end"
        )
    check_backend(config["trainer"]["eval_backend"], argument="trainer.eval_backend")


def validation_schedule(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``lightning.Trainer`` arguments that run the validation loop every ``eval_period`` iterations.

    ``check_val_every_n_epoch=None`` makes ``val_check_interval`` count training batches across
    epochs (the run is iteration-based, epochs have no meaning); one batch is one iteration.
    """
    period = int(trainer_cfg["eval_period"])
    if period <= 0:
        return {"limit_val_batches": 0}
    return {"val_check_interval": period, "check_val_every_n_epoch": None}


def validation_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The validation rows (``"val/AP"`` present) of ``metrics.jsonl`` records, in file order."""
    return [record for record in records if f"{VALIDATION_PREFIX}AP" in record]


class PeriodicValidation(L.Callback):
    """Scores the validation loop's detections with COCO AP; logs them and keeps the best weights.

    The task's ``validation_step`` returns the detections of a batch (``list[dict]`` with
    ``"boxes" (D, 4)`` xyxy in input pixels, ``"scores" (D,)``, ``"labels" (D,)``); this callback
    maps them to original-image pixels and dataset category ids with the batch's targets.

    Args:
        config: the resolved config (``trainer.eval_backend``; saved in ``model_best.pth``).
        run_dir: the run folder (``metrics.jsonl``, ``model_best.pth``).
        metrics_path: the run's ``metrics.jsonl``.
        export: returns the deployable weights of the trained model (a student alone for a
            distillation), as for ``model_final.pth``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        run_dir: str | Path,
        metrics_path: str | Path,
        export: Callable[[nn.Module], dict[str, torch.Tensor]],
    ) -> None:
        super().__init__()
        self.config = config
        self.backend = config["trainer"]["eval_backend"]
        self.best_path = Path(run_dir) / BEST_WEIGHTS_NAME
        self.metrics_path = Path(metrics_path)
        self.export = export
        self.best_ap = -math.inf
        self._per_image: dict[int, list[dict[str, Any]]] = {}
        self._category_ids: list[int] = []
        self._started = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run keeps the rows up to its checkpoint (metrics.jsonl is cut there before
        # fit): its best so far is the best of those, not of evaluations the resume repeats.
        self.best_ap = -math.inf
        if trainer.is_global_zero and self.metrics_path.is_file():
            for row in validation_rows(read_metrics(self.metrics_path)):
                value = float(row[f"{VALIDATION_PREFIX}AP"])
                if math.isfinite(value):
                    self.best_ap = max(self.best_ap, value)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._per_image = {}
        self._started = time.perf_counter()
        self._category_ids = evaluation_category_ids(self.config, trainer.val_dataloaders.dataset)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        image_ids = [int(target["image_id"]) for target in batch.targets]
        # Half-precision boxes and scores (AMP) are widened before the pixel arithmetic.
        detections = [
            {key: (value.float() if value.is_floating_point() else value).detach().cpu() for key, value in det.items()}
            for det in outputs
        ]
        for image_id, det, target in zip(image_ids, detections, batch.targets):
            # One entry per image, also for an image without detections: the distributed sampler
            # repeats images to give every rank the same count, and a dict keyed by image id
            # counts each once.
            scale = float(target["scale"])
            self._per_image[image_id] = detections_to_coco([det], [image_id], [scale], self._category_ids)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_image = _gather_on_rank_zero(self._per_image, trainer)
        self._per_image = {}
        # Lightning's sanity check (when enabled) validates a few batches of untrained weights.
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        dataset = trainer.val_dataloaders.dataset
        results = [entry for image_id in sorted(per_image) for entry in per_image[image_id]]
        # Every image of the split counts, as in eval.json: one a rank failed to send is a miss.
        metrics = coco_evaluate(dataset.coco_json_path, results, backend=self.backend)
        step = trainer.global_step
        row = {"iter": step, **{f"{VALIDATION_PREFIX}{key}": metrics[key] for key in AP_KEYS}}
        append_record(self.metrics_path, row)
        # Loggers get the metrics that exist; NaN (no object of that size) would draw a gap anyway.
        finite = {key: value for key, value in row.items() if key != "iter" and math.isfinite(value)}
        for run_logger in trainer.loggers:
            run_logger.log_metrics(finite, step=step)
        ap = metrics["AP"]
        improved = math.isfinite(ap) and ap > self.best_ap
        if improved:
            self.best_ap = ap
            save_atomic({"model": self.export(pl_module.model), "config": self.config}, self.best_path)
        logger.info(
            "validation at iteration %d on %d images: AP %.2f, AP50 %.2f (%.1f s)%s",
            step,
            len(per_image),
            ap,
            metrics["AP50"],
            time.perf_counter() - self._started,
            f"; best so far, saved {self.best_path.name}" if improved else "",
        )


def _gather_on_rank_zero(per_image: dict[int, list[dict]], trainer: L.Trainer) -> dict[int, list[dict]]:
    """Union of every rank's ``{image_id: entries}`` on rank 0 (an empty dict on the other ranks)."""
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return per_image
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    dist.gather_object(per_image, gathered, dst=0)
    merged: dict[int, list[dict]] = {}
    for part in gathered or []:
        merged.update(part)
    return merged
