"""The evaluation standard error of one run's COCO AP: a bootstrap over validation images.

Two runs that differ by 0.3 AP on a few hundred validation images may differ only by which images
the split happened to hold. Resampling the images with replacement and recomputing AP measures that
spread: the standard deviation of the resampled APs is the evaluation standard error (SE).

pycocotools' ``COCOeval.evaluate()`` runs once; each resample re-accumulates precision from its
per-image records (:mod:`msadkit.analysis.coco_accumulation`), an image drawn twice counting twice.
With every image drawn once the numbers are pycocotools' own, bit for bit.

Metrics are in percent like ``eval.json``; NaN where the ground truth has no object of that size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msadkit.analysis.coco_accumulation import evaluate_per_image, resample_counts
from msadkit.data.build import resolve_data_paths
from msadkit.engine.evaluation.coco_evaluation import AP_KEYS
from msadkit.errors import MsadkitError
from msadkit.utils.run_folder import BOOTSTRAP_NAME, DETECTIONS_NAME, read_run_config, write_json_atomic

__all__ = [
    "bootstrap_ap",
    "BootstrapAP",
    "bootstrap_run",
    "cached_bootstrap",
    "run_validation_json",
    "EvaluationSE",
]


@dataclass(frozen=True)
class EvaluationSE:
    """A run's metric with its evaluation SE, and whether the SE is within ``limit`` AP points."""

    metric: str
    value: float
    se: float
    num_images: int
    limit: float = 0.5

    @property
    def within_limit(self) -> bool:
        return self.se <= self.limit

    @property
    def images_for_limit(self) -> int:
        """About how many validation images would bring the SE to ``limit`` (SE falls as 1/sqrt(images))."""
        return math.ceil(self.num_images * (self.se / self.limit) ** 2)

    def __str__(self) -> str:
        text = f"{self.metric} {self.value:.2f}, evaluation SE {self.se:.2f} over {self.num_images} validation images"
        if self.within_limit:
            return f"{text} (<= {self.limit:g})"
        return f"{text} (> {self.limit:g}; about {self.images_for_limit} images would bring it to {self.limit:g})"


@dataclass(frozen=True)
class BootstrapAP:
    """One run's metrics with their bootstrap SE.

    Attributes:
        metrics: ``{"AP": (value, se), ...}`` for every key of ``eval.json``, in percent; the value
            is the full validation set's (``eval.json``'s), the SE the sample standard deviation of
            the resampled values (NaN when fewer than 2 resamples define the metric).
        num_images, num_samples, seed: validation images, resamples and the generator's seed.
    """

    metrics: dict[str, tuple[float, float]]
    num_images: int
    num_samples: int
    seed: int

    def evaluation_se(self, metric: str = "AP", *, limit: float = 0.5) -> EvaluationSE:
        value, se = self.metrics[metric]
        return EvaluationSE(metric, value, se, self.num_images, limit)


def bootstrap_run(
    gt_json: str | os.PathLike, results: list[dict], *, num_samples: int = 200, seed: int = 0
) -> BootstrapAP:
    """Like :func:`bootstrap_ap`, with the number of images and the settings kept."""
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    evaluation = evaluate_per_image(gt_json, results)
    if not evaluation.image_ids:
        raise MsadkitError(f"{gt_json} has no images to resample")
    full = evaluation.metrics()
    samples = [evaluation.metrics(counts) for counts in resample_counts(len(evaluation.image_ids), num_samples, seed)]
    metrics = {}
    for key in AP_KEYS:
        values = np.array([sample[key] for sample in samples])
        values = values[~np.isnan(values)]
        metrics[key] = (full[key], float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan)
    return BootstrapAP(metrics, len(evaluation.image_ids), num_samples, seed)


def bootstrap_ap(
    gt_json: str | os.PathLike, results: list[dict], *, num_samples: int = 200, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Each COCO metric of ``results`` with its bootstrap standard error over validation images.

    Args:
        gt_json: the validation ground truth (COCO json).
        results: COCO result entries (``detections_val.json`` of a run).
        num_samples: resamples of the images (with replacement).
        seed: seed of the resampling.

    Returns:
        ``{"AP": (value, se), "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ...}`` in
        percent; values equal ``coco_evaluate``'s.
    """
    return bootstrap_run(gt_json, results, num_samples=num_samples, seed=seed).metrics


def cached_bootstrap(
    run_dir: str | os.PathLike,
    num_samples: int = 200,
    seed: int = 0,
    *,
    gt_json: str | os.PathLike | None = None,
) -> BootstrapAP:
    """The bootstrap of a run folder's ``detections_val.json``, cached in its ``bootstrap_ap.json``.

    The cache is used when it is at least as new as the detections and was made with the same
    ``num_samples`` and ``seed``; otherwise it is recomputed and rewritten (atomically). It does not
    record the ground truth: pass ``gt_json`` only to name the run's own validation json elsewhere.

    Args:
        run_dir: a run folder whose final evaluation wrote ``detections_val.json``.
        gt_json: the validation ground truth (default: the run config's validation json).

    Raises:
        MsadkitError: the folder has no ``detections_val.json``.
    """
    run_dir = Path(run_dir)
    detections = run_dir / DETECTIONS_NAME
    if not detections.is_file():
        raise MsadkitError(
            f"{run_dir} has no {DETECTIONS_NAME}: evaluate the run again (`msadkit evaluate {run_dir}`) to write it"
        )
    cache = run_dir / BOOTSTRAP_NAME
    if cache.is_file() and cache.stat().st_mtime_ns >= detections.stat().st_mtime_ns:
        try:
            stored = json.loads(cache.read_text())
            if stored.get("num_samples") == num_samples and stored.get("seed") == seed:
                metrics = {key: (float(v["value"]), float(v["se"])) for key, v in stored["metrics"].items()}
                return BootstrapAP(metrics, int(stored["num_images"]), num_samples, seed)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # An unreadable cache is recomputed.
    if gt_json is None:
        gt_json = run_validation_json(run_dir)
    result = bootstrap_run(gt_json, json.loads(detections.read_text()), num_samples=num_samples, seed=seed)
    write_json_atomic(cache, _cache_record(result))
    return result


def run_validation_json(run_dir: str | os.PathLike) -> Path:
    """The validation ground-truth json of a run folder's config (generating the synthetic set if needed)."""
    return Path(resolve_data_paths(read_run_config(run_dir))["val_json"])


def _cache_record(result: BootstrapAP) -> dict[str, Any]:
    return {
        "num_samples": result.num_samples,
        "seed": result.seed,
        "num_images": result.num_images,
        "metrics": {key: {"value": value, "se": se} for key, (value, se) in result.metrics.items()},
    }
