"""Refusing a ``--resume`` whose config builds a model the checkpoint does not fit, before writing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from msadkit.errors import ConfigError
from msadkit.utils.checkpoint import format_keys, key_problems
from msadkit.utils.run_folder import CONFIG_NAME

__all__ = ["differing_config_keys", "check_resume_fits"]

# Keys whose values may change between the run and its resume without changing the weights' layout.
_RUN_SETTINGS = ("output_dir",)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return flat


def differing_config_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key (run X, now Y)`` for every dotted key whose value differs, ``model.`` and ``distill.`` keys first."""
    old, new = _flatten(before), _flatten(now)
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RUN_SETTINGS)
    keys.sort(key=lambda k: not k.startswith(("model.", "distill.")))
    return [f"{k} (run {old.get(k)!r}, now {new.get(k)!r})" for k in keys]


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        config = yaml.safe_load((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def check_resume_fits(checkpoint: Path, module: nn.Module, run_dir: Path, config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``checkpoint``'s weights fit ``module`` key for key and shape.

    The message (one line) names the config keys that differ from the run's ``config.yaml`` and the
    tensors that do not fit. Only the checkpoint's tensor headers are read (memory-mapped).

    Args:
        checkpoint: the Lightning checkpoint to resume from.
        module: the LightningModule built from ``config`` (its ``state_dict`` is what is restored).
        run_dir: the run folder (its ``config.yaml`` is the run's config).
        config: the config of this call.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
    except Exception as exc:  # torch raises many types for unreadable files; _resume_point checked it opens
        raise ConfigError(f"--resume: checkpoint {checkpoint} has no readable state_dict ({exc})") from None
    own = module.state_dict()
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    problems = key_problems(sorted(set(own) - set(state)), sorted(set(state) - set(own)), mismatched)
    if not problems:
        return
    before = _run_config(run_dir)
    differing = differing_config_keys(before, config) if before is not None else []
    cause = (
        f"config keys differ from the run's {CONFIG_NAME}: {format_keys(differing, limit=8)}; "
        if differing
        else ""
    )
    raise ConfigError(
        f"--resume: checkpoint {checkpoint} does not fit the configured model: {cause}"
        + "; ".join(problems)
        + ". Resume with the run's own config, or train into another output_dir"
    )
