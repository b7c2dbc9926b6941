"""The run folder: resolved config, metrics, checkpoints, evaluation and summary of one run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from msadkit.config import dump_config
from msadkit.config.sections import dotted_value
from msadkit.errors import ConfigError
from msadkit.utils.atomic import write_text_atomic

__all__ = [
    "CONFIG_NAME",
    "FINAL_WEIGHTS_NAME",
    "EVAL_NAME",
    "DETECTIONS_NAME",
    "BOOTSTRAP_NAME",
    "SUMMARY_NAME",
    "METRICS_NAME",
    "CHECKPOINT_DIR",
    "AP_METRICS",
    "write_text_atomic",
    "write_json_atomic",
    "write_run_config",
    "read_run_config",
    "last_checkpoint",
    "summary_fields",
]

CONFIG_NAME = "config.yaml"
FINAL_WEIGHTS_NAME = "model_final.pth"
EVAL_NAME = "eval.json"
DETECTIONS_NAME = "detections_val.json"
"""The COCO result entries that the final evaluation scored (``eval.json``), kept for re-evaluation."""
BOOTSTRAP_NAME = "bootstrap_ap.json"
"""Cache of the bootstrap evaluation SE computed from ``detections_val.json``."""
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

AP_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The COCO metrics of ``eval.json``, in table order."""


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def write_run_config(run_dir: Path, config: dict[str, Any]) -> Path:
    return write_text_atomic(run_dir / CONFIG_NAME, dump_config(config))


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config a run folder was trained with."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {path} does not exist")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"{path} does not hold a config mapping")
    return config


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The resumable checkpoint of a run folder."""
    return Path(run_dir) / CHECKPOINT_DIR / "last.ckpt"


def summary_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The AP-table columns that describe a run, from its resolved config.

    ``method``, ``role``, ``backbone``; ``width`` for the slimmable backbone only (a plain ResNet
    has none); ``resolution`` (``"high+low"`` for an MSAD teacher); ``schedule`` (the config's label,
    else ``"<max_iter>it"``). Missing keys give None, so an older or partial config still reads.
    """
    backbone = dotted_value(config, "model.backbone.name")
    max_iter = dotted_value(config, "solver.max_iter")
    resolution = dotted_value(config, "model.resolution")
    if dotted_value(config, "model.arch") == "msad_teacher":
        resolution = "high+low"
    return {
        "method": dotted_value(config, "method"),
        "backbone": backbone,
        "width": dotted_value(config, "model.backbone.width") if backbone == "slimmable_resnet50" else None,
        "role": dotted_value(config, "role"),
        "resolution": resolution,
        "schedule": dotted_value(config, "schedule") or (f"{max_iter}it" if max_iter is not None else None),
    }
