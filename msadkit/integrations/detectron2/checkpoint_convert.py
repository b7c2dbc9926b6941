"""Convert checkpoints between msadkit and detectron2 for the same model.

- msadkit: ``model_final.pth`` = ``{"model": state_dict, "config": resolved msadkit config}``, the
  deployable model only (a distiller's student).
- detectron2: ``{"model": state_dict of MsadkitDetector, ...}`` as ``DetectionCheckpointer`` writes
  and reads it. ``MsadkitDetector`` registers the msadkit model as ``model``, so its keys are the
  msadkit keys behind ``model.``; a distillation run adds ``distill_losses.*`` (training-only
  adapters, which a msadkit ``model_final.pth`` does not hold either). Files written here also carry
  ``"msadkit_config"``, so they convert back without naming the config again.

Both directions check every key strictly against the model the config builds. Command line::

    python -m msadkit.integrations.detectron2.checkpoint_convert to-detectron2 model_final.pth d2.pth
    python -m msadkit.integrations.detectron2.checkpoint_convert to-msadkit d2/model_final.pth \\
        model_final.pth --config-file MSAD-Teacher-W025 [MSADKIT.OVERRIDES "['...']"]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from msadkit.config.loader import complete_config
from msadkit.errors import CheckpointError, MsadkitError
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict, save_atomic

__all__ = [
    "MODEL_PREFIX",
    "TRAINING_ONLY_PREFIX",
    "msadkit_to_detectron2",
    "detectron2_to_msadkit",
    "check_state_fits_config",
    "convert_msadkit_to_detectron2",
    "convert_detectron2_to_msadkit",
    "export_msadkit_run",
    "build_parser",
    "parse_args",
    "main",
]

MODEL_PREFIX = "model."
TRAINING_ONLY_PREFIX = "distill_losses."


def msadkit_to_detectron2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """msadkit model weights -> ``MsadkitDetector`` weights (every key gets the ``model.`` prefix)."""
    return {MODEL_PREFIX + key: value for key, value in state.items()}


def detectron2_to_msadkit(state: Mapping[str, Tensor], *, source: str = "checkpoint") -> dict[str, Tensor]:
    """``MsadkitDetector`` weights -> msadkit model weights.

    ``model.*`` keys lose the prefix; ``distill_losses.*`` (distillation adapters, used only while
    training) are left out, as msadkit's own ``model_final.pth`` leaves them out.

    Raises:
        CheckpointError: a key is neither (for example a checkpoint of another detectron2 model).
    """
    foreign = sorted(k for k in state if not k.startswith((MODEL_PREFIX, TRAINING_ONLY_PREFIX)))
    if foreign:
        shown = ", ".join(foreign[:10]) + (f", ... ({len(foreign) - 10} more)" if len(foreign) > 10 else "")
        raise CheckpointError(
            f"{source} is not a MsadkitDetector checkpoint: keys outside 'model.' and 'distill_losses.': {shown}"
        )
    return {key[len(MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}


def check_state_fits_config(state: Mapping[str, Tensor], config: Mapping[str, Any], source: str) -> None:
    """Build the deployable model of ``config`` and load ``state`` into it strictly.

    Raises:
        CheckpointError: missing, unexpected or misshapen keys, all listed.
    """
    from msadkit.modeling.registry import build_model

    config = complete_config(config)
    # The weights come from the checkpoint: the ImageNet file need not exist here.
    config["model"]["backbone"]["weights"] = None
    load_state_dict_strict(build_model(config), state, source)


def _model_state(data: Mapping[str, Any], path: str | os.PathLike) -> dict[str, Tensor]:
    state = data.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} has no 'model' state dict")
    return dict(state)


def convert_msadkit_to_detectron2(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """msadkit ``model_final.pth`` -> a checkpoint ``DetectionCheckpointer`` loads into ``MsadkitDetector``.

    Raises:
        CheckpointError: ``src`` is unreadable, embeds no config, or its weights do not fit it.
    """
    data = load_checkpoint_file(src)
    state = _model_state(data, src)
    config = data.get("config")
    if not isinstance(config, Mapping):
        raise CheckpointError(f"checkpoint {src} embeds no msadkit 'config'; it is not a msadkit model_final.pth")
    check_state_fits_config(state, config, str(src))
    payload = {"model": msadkit_to_detectron2(state), "__author__": "msadkit", "msadkit_config": dict(config)}
    return save_atomic(payload, dst)


def convert_detectron2_to_msadkit(
    src: str | os.PathLike, dst: str | os.PathLike, *, config: Mapping[str, Any] | None = None
) -> Path:
    """A ``MsadkitDetector`` checkpoint -> msadkit ``model_final.pth`` (``{"model", "config"}``).

    Args:
        src: a checkpoint written by detectron2's ``DetectionCheckpointer`` (or by this module).
        dst: the msadkit file to write.
        config: the resolved msadkit config of the model; defaults to the ``"msadkit_config"`` the
            file carries.

    Raises:
        CheckpointError: ``src`` is unreadable or foreign, no config is known, or the weights do
            not fit the config's model.
    """
    data = load_checkpoint_file(src)
    state = detectron2_to_msadkit(_model_state(data, src), source=f"checkpoint {src}")
    if config is None:
        config = data.get("msadkit_config")
        if not isinstance(config, Mapping):
            raise CheckpointError(
                f"checkpoint {src} does not carry its msadkit config; pass the detectron2 config that trained it "
                "(--config-file) or the msadkit config"
            )
    check_state_fits_config(state, config, str(src))
    return save_atomic({"model": state, "config": complete_config(config)}, dst)


def export_msadkit_run(model: Any, run_dir: str | os.PathLike) -> Path:
    """Write a ``MsadkitDetector``'s deployable weights as a msadkit run folder.

    The folder holds ``config.yaml`` (the resolved msadkit config) and ``model_final.pth``
    (``{"model", "config"}``), the layout ``msadkit train`` writes: ``msadkit evaluate`` scores it
    and a student names it (or its ``model_final.pth``) as ``distill.teacher``.

    Returns:
        ``run_dir``.

    Raises:
        CheckpointError: ``model`` carries no msadkit config.
    """
    from msadkit.utils.run_folder import FINAL_WEIGHTS_NAME, write_run_config

    config = getattr(model, "msadkit_config", None)
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{type(model).__name__} has no msadkit config to write to {run_dir}")
    run_dir = Path(run_dir)
    save_atomic({"model": model.model.state_dict(), "config": dict(config)}, run_dir / FINAL_WEIGHTS_NAME)
    write_run_config(run_dir, dict(config))
    return run_dir


def _config_from_detectron2_yaml(config_file: str, opts: Sequence[str]) -> dict[str, Any]:
    from detectron2.config import get_cfg

    from msadkit.integrations.detectron2.config import (
        add_msadkit_config,
        msadkit_config_from_cfg,
        resolve_detectron2_config,
    )

    cfg = add_msadkit_config(get_cfg())
    cfg.merge_from_file(str(resolve_detectron2_config(config_file)))
    cfg.merge_from_list(list(opts))
    return msadkit_config_from_cfg(cfg)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; read ``argv`` with :func:`parse_args` (options and ``KEY VALUE``
    pairs may come in any order)."""
    parser = argparse.ArgumentParser(
        prog="python -m msadkit.integrations.detectron2.checkpoint_convert",
        description="Convert a checkpoint between msadkit and detectron2 (MsadkitDetector).",
    )
    parser.add_argument(
        "direction",
        choices=("to-detectron2", "to-msadkit"),
        help="to-detectron2: msadkit model_final.pth -> MsadkitDetector checkpoint; to-msadkit: the reverse",
    )
    parser.add_argument("src", help="checkpoint to read")
    parser.add_argument("dst", help="checkpoint to write")
    parser.add_argument(
        "--config-file",
        default=None,
        help="to-msadkit: the detectron2 YAML (path or packaged name) that trained src, when src does not carry its config",
    )
    # Not REMAINDER: that would swallow a --config-file written after the pairs or after dst.
    parser.add_argument(
        "opts", nargs="*", default=[], metavar="KEY VALUE", help="detectron2 KEY VALUE pairs applied to --config-file"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``direction src dst [--config-file CFG] [KEY VALUE ...]``, the options anywhere.

    Exits with status 2 and a usage message when the pairs are not pairs, or name no config file.
    """
    parser = build_parser()
    # Intermixed: positionals after an option still fill `opts` instead of being refused.
    args = parser.parse_intermixed_args(argv)
    if len(args.opts) % 2:
        parser.error(f"KEY VALUE pairs expected after the files, got an odd number of items: {' '.join(args.opts)}")
    if args.opts and not args.config_file:
        parser.error(f"KEY VALUE pairs ({' '.join(args.opts)}) apply to a --config-file; give one")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 for a user error)."""
    args = parse_args(argv)
    try:
        if args.direction == "to-detectron2":
            written = convert_msadkit_to_detectron2(args.src, args.dst)
        else:
            config = _config_from_detectron2_yaml(args.config_file, args.opts) if args.config_file else None
            written = convert_detectron2_to_msadkit(args.src, args.dst, config=config)
    except MsadkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
