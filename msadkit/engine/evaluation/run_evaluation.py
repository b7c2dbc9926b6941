"""Evaluating a model or a finished run on its validation split; the run's summary row."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from msadkit.data.build import build_dataset, build_loader
from msadkit.engine.evaluation.coco_evaluation import coco_evaluate
from msadkit.engine.inference.detect import evaluation_category_ids, predict_coco_results
from msadkit.errors import ConfigError
from msadkit.modeling.backbones.capacity import capacity_of
from msadkit.modeling.image_batch import pixel_normalizer
from msadkit.modeling.loading import load_run_model
from msadkit.utils.run_folder import (
    DETECTIONS_NAME,
    EVAL_NAME,
    SUMMARY_NAME,
    summary_fields,
    write_json_atomic,
    write_run_config,
    write_text_atomic,
)

__all__ = ["evaluate_model", "evaluate_run", "run_summary"]

logger = logging.getLogger(__name__)


def run_summary(config: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """The row of the AP table that describes this run (``summary.json``)."""
    fields = summary_fields(config)
    capacity = capacity_of(fields["backbone"], fields["width"], fields["resolution"])
    return {**fields, "capacity": None if capacity is None else round(capacity, 3), "eval": metrics}


def evaluate_model(
    model: nn.Module,
    config: dict[str, Any],
    run_dir: str | os.PathLike | None = None,
    *,
    dataset: torch.utils.data.Dataset | None = None,
    device: torch.device | str = "cpu",
    name: str = EVAL_NAME,
) -> dict[str, float]:
    """COCO AP of ``model`` on the validation split (evaluator ``trainer.eval_backend``).

    With ``run_dir``, the metrics go to ``run_dir/<name>``; for ``eval.json`` also the run's
    ``summary.json`` and the scored COCO result entries, ``detections_val.json``, so that the
    evaluation can be redone or bootstrapped later without the model.
    """
    dataset = dataset if dataset is not None else build_dataset(config, "val")
    loader = build_loader(config, dataset, train=False)
    results = predict_coco_results(
        model,
        loader,
        evaluation_category_ids(config, dataset),
        pixels=pixel_normalizer(config),
        device=device,
        precision=config["trainer"]["precision"],
        channels_last=config["trainer"]["channels_last"],
    )
    # No table logged here: `msadkit evaluate` prints it and training logs it (once each).
    metrics = coco_evaluate(dataset.coco_json_path, results, backend=config["trainer"]["eval_backend"])
    if run_dir is not None:
        run_dir = Path(run_dir)
        if name == EVAL_NAME:
            # Before eval.json, whose presence marks a finished evaluation; compact, since a COCO-sized
            # split holds hundreds of thousands of entries, and unrounded, so re-evaluation is exact.
            write_text_atomic(run_dir / DETECTIONS_NAME, json.dumps(results, separators=(",", ":")) + "\n")
        write_json_atomic(run_dir / name, metrics)
        if name == EVAL_NAME:
            write_json_atomic(run_dir / SUMMARY_NAME, run_summary(config, metrics))
    return metrics


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Sequence[str] = (),
    device: str = "cpu",
    write: bool = True,
    name: str = EVAL_NAME,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Evaluate a run folder's final weights (or ``weights``) on its validation split.

    Args:
        run_dir: folder written by :func:`train`.
        weights: another checkpoint to evaluate instead of ``model_final.pth``.
        overrides: nested config values to change for the evaluation (checked like config keys),
            e.g. ``{"model": {"msad": {"eval_branch": "high"}}}``.
        settings: ``dotted.key=value`` config changes for the evaluation, e.g.
            ``data.synthetic.num_val=384`` (a larger validation split); they need ``output_dir``.
        device: where to run.
        write: write ``<name>`` (and ``summary.json`` when ``name`` is ``eval.json``).
        name: file name of the metrics, so another branch or checkpoint does not replace eval.json.
        output_dir: where to write instead of ``run_dir``: an evaluation folder that reads like a run
            folder (its ``config.yaml`` is the evaluated config, so the bootstrap of
            :mod:`msadkit.analysis.bootstrap_ap` finds the same validation split there).

    Raises:
        ConfigError: ``settings`` without ``output_dir`` (the run's own ``eval.json`` would then
            describe another evaluation than its config), or a bad setting.
    """
    run_dir = Path(run_dir)
    if settings and write and output_dir is None:
        raise ConfigError(
            f"evaluating {run_dir} with changed settings ({' '.join(settings)}) needs an output folder "
            "(--output-dir), so that the run's own eval.json stays its own"
        )
    model, config = load_run_model(run_dir, weights=weights, overrides=overrides, settings=settings, device=device,
                                   argument="run")
    target = run_dir
    if write and output_dir is not None:
        target = Path(output_dir)
        target.mkdir(parents=True, exist_ok=True)
        write_run_config(target, config)
    dataset = build_dataset(config, "val")
    return evaluate_model(
        model, config, target if write else None, dataset=dataset, device=next(model.parameters()).device, name=name
    )
