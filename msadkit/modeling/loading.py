"""Loading the model of a finished run: one way for training, evaluation, notebooks and commands.

A run is a run folder (``config.yaml`` + ``model_final.pth``) or a ``model_final.pth`` file, which
embeds its config (``{"model": state_dict, "config": config}``). The model is rebuilt from the run's
own config and its weights are loaded strictly. The ImageNet/slimmable file the run started from is
never read again: every weight comes from the checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from msadkit.config.loader import complete_config, merge_into_config, merge_override_strings
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict
from msadkit.utils.device import resolve_device
from msadkit.utils.run_folder import CONFIG_NAME, FINAL_WEIGHTS_NAME, read_run_config

__all__ = ["checkpoint_state_dict", "load_model_weights", "read_run_checkpoint", "load_run_model"]


def checkpoint_state_dict(data: dict[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights in a loaded ``model_final.pth`` (``{"model": ...}``) or Lightning ``.ckpt``.

    Raises:
        CheckpointError: the file holds neither.
    """
    if isinstance(data.get("model"), dict):
        return data["model"]
    if isinstance(data.get("state_dict"), dict):
        # Lightning checkpoints prefix the task's attribute name.
        return {k[len("model."):]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
    raise CheckpointError(f"checkpoint {path} has neither a 'model' nor a 'state_dict' entry")


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Strictly load ``model_final.pth`` (``{"model": ...}``) or a Lightning ``.ckpt`` into ``model``."""
    load_state_dict_strict(model, checkpoint_state_dict(load_checkpoint_file(path), path), str(path))


def read_run_checkpoint(
    source: str | os.PathLike, *, argument: str = "distill.teacher", require_weights: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """The run's config (completed with today's defaults), its weights and the file they came from.

    Args:
        source: a run folder or a ``model_final.pth`` file.
        argument: the config key or parameter that named ``source``, for error messages.
        require_weights: a run folder must hold ``model_final.pth``; without it only the config is
            read from a folder and the returned weights are None.

    Raises:
        CheckpointError: the folder or a file in it is missing, or the file lacks its config or
            weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, path / FINAL_WEIGHTS_NAME
        for needed in (config_path, weights_path) if require_weights else (config_path,):
            if not needed.is_file():
                raise CheckpointError(
                    f"{argument}={source}: the run folder has no {needed.name} ({needed} does "
                    "not exist); train that run to the end first"
                )
        state = load_checkpoint_file(weights_path).get("model") if require_weights else None
        try:
            config = read_run_config(path)
        except ConfigError as exc:
            raise CheckpointError(f"{argument}={source}: {exc}") from None
    elif path.is_file():
        weights_path = path
        data = load_checkpoint_file(path)
        config, state = data.get("config"), data.get("model")
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{argument}={source}: {path} embeds no 'config'; point {argument} at the "
                "run folder or its model_final.pth"
            )
    else:
        raise CheckpointError(
            f"{argument}={source}: no such run folder or checkpoint file ({path.absolute()} does not exist)"
        )
    if (require_weights or state is not None) and not isinstance(state, dict):
        raise CheckpointError(f"{argument}={source}: {weights_path} has no 'model' state dict")
    return complete_config(config), state, str(weights_path)


def load_run_model(
    source: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Sequence[str] = (),
    device: str | torch.device = "cpu",
    argument: str = "distill.teacher",
) -> tuple[nn.Module, dict[str, Any]]:
    """The deployable model of a finished run, rebuilt from its config and loaded strictly.

    A distillation run gives its student (``model_final.pth`` holds the student alone), a teacher
    run its teacher.

    Args:
        source: a run folder or a ``model_final.pth`` file.
        weights: another checkpoint of the same model to load instead (``model_final.pth`` of
            another run, a Lightning ``.ckpt``).
        overrides: nested config values to change, checked like config keys (e.g.
            ``{"model": {"msad": {"eval_branch": "high"}}}``).
        settings: ``dotted.key=value`` strings applied after ``overrides``, checked the same way.
        device: where to put the model: ``auto`` (a GPU when present), ``cpu``, ``cuda[:N]`` or a device.
        argument: the key or parameter that named ``source``, for error messages.

    Returns:
        ``(model, config)`` with the model in eval mode on ``device``.

    Raises:
        CheckpointError: missing files, or weights that do not fit (the keys are listed).
    """
    config, state, weights_path = read_run_checkpoint(source, argument=argument, require_weights=weights is None)
    merge_into_config(config, overrides or {}, "overrides")
    merge_override_strings(config, settings)
    config["model"]["backbone"]["weights"] = None
    model = build_model(config)
    if weights is not None:
        load_model_weights(model, weights)
    else:
        load_state_dict_strict(model, state, weights_path)
    return model.to(resolve_device(device, argument="device")).eval(), config
