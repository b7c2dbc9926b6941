"""The run folder: resolved config, metrics, checkpoints, evaluation and summary of one run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from msadkit.config import dump_config
from msadkit.errors import ConfigError
from msadkit.utils.atomic import write_text_atomic

__all__ = [
    "CONFIG_NAME",
    "FINAL_WEIGHTS_NAME",
    "EVAL_NAME",
    "SUMMARY_NAME",
    "METRICS_NAME",
    "write_text_atomic",
    "write_json_atomic",
    "read_run_config",
    "last_checkpoint",
]

CONFIG_NAME = "config.yaml"
FINAL_WEIGHTS_NAME = "model_final.pth"
EVAL_NAME = "eval.json"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


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
