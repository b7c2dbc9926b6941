"""Build a :class:`Distiller` from a config whose ``distill.teacher`` is set.

The ``model`` section describes the student (already built by ``build_model``); the teacher comes
from a finished run: a run folder (``config.yaml`` + ``model_final.pth``) or a ``model_final.pth``
file, which embeds its config. It is rebuilt from its own config and loaded strictly. The loss
terms come from ``distill.losses`` through the term registry.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from msadkit.config import default_config
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict
from msadkit.engine.run_folder import CONFIG_NAME, FINAL_WEIGHTS_NAME, read_run_config
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.distillation.distiller import Distiller
from msadkit.modeling.distillation.terms.registry import build_term
from msadkit.modeling.msad_teacher import SIZE_DIVISIBILITY, MSADTeacher

__all__ = [
    "build_distiller",
    "load_teacher",
    "read_teacher_checkpoint",
    "init_student_from_teacher",
    "teacher_detector",
]


def _complete(defaults: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` on top of ``defaults``, so a run written before a key existed still builds."""
    merged = copy.deepcopy(defaults)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _complete(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_teacher_checkpoint(source: str | Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The teacher's config, its weights and the file they came from.

    Args:
        source: a run folder (``config.yaml`` and ``model_final.pth``) or a ``model_final.pth``
            file holding ``{"model": state_dict, "config": config}``.

    Raises:
        CheckpointError: the folder or a file in it is missing, or the file lacks its config or
            weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, path / FINAL_WEIGHTS_NAME
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise CheckpointError(
                    f"distill.teacher={source}: the teacher run folder has no {needed.name} ({needed} does "
                    "not exist); train the teacher to the end first"
                )
        data = load_checkpoint_file(weights_path)
        try:
            config = read_run_config(path)
        except ConfigError as exc:
            raise CheckpointError(f"distill.teacher={source}: {exc}") from None
    elif path.is_file():
        weights_path = path
        data = load_checkpoint_file(path)
        config = data.get("config")
        if not isinstance(config, dict):
            raise CheckpointError(
                f"distill.teacher={source}: {path} embeds no 'config'; point distill.teacher at the "
                "teacher's run folder or its model_final.pth"
            )
    else:
        raise CheckpointError(f"distill.teacher={source}: no such run folder or checkpoint file")
    state = data.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"distill.teacher={source}: {weights_path} has no 'model' state dict")
    return _complete(default_config(), config), state, str(weights_path)


def load_teacher(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the teacher from its own config and load its weights strictly.

    Returns:
        ``(teacher, teacher_config)``; the teacher is on the CPU in eval mode.

    Raises:
        CheckpointError: missing files, or weights that do not fit (listing the keys).
    """
    from msadkit.modeling.build import build_model

    config, state, weights_path = read_teacher_checkpoint(source)
    # Every weight comes from the checkpoint; the ImageNet file the teacher started from is not needed.
    config["model"]["backbone"]["weights"] = None
    teacher = build_model(config, for_inference=True)
    load_state_dict_strict(teacher, state, weights_path)
    return teacher.eval(), config


def teacher_detector(teacher: nn.Module) -> nn.Module:
    """The plain detector inside a teacher: an MSAD teacher's shared FCOS, else the teacher itself."""
    return getattr(teacher, "detector", teacher)


def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, *, student_config: dict[str, Any], teacher_config: dict[str, Any]
) -> None:
    """Copy the teacher's backbone, FPN (the levels the student has) and head into the student.

    Every parameter and buffer of the student must come from the teacher.

    Raises:
        ConfigError: a student tensor has no counterpart in the teacher (listed), or shapes
            differ (init needs equal widths).
    """
    source = teacher_detector(teacher).state_dict()
    target = student.state_dict()
    missing = sorted(name for name in target if name not in source)
    mismatched = sorted(
        f"{name} (student {tuple(target[name].shape)}, teacher {tuple(source[name].shape)})"
        for name in target
        if name in source and target[name].shape != source[name].shape
    )
    if missing:
        raise ConfigError(
            "distill.init_student_from_teacher: the teacher has no weights for these student tensors "
            f"(architectures differ): {', '.join(missing[:20])}"
            + (f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "")
        )
    if mismatched:
        s_model, t_model = student_config["model"], teacher_config["model"]
        raise ConfigError(
            "distill.init_student_from_teacher needs equal widths: the student has "
            f"model.backbone.width={s_model['backbone']['width']}, model.fpn.out_channels="
            f"{s_model['fpn']['out_channels']}, the teacher width={t_model['backbone']['width']}, "
            f"out_channels={t_model['fpn']['out_channels']}; mismatched: {', '.join(mismatched[:10])}"
            + (f", ... ({len(mismatched) - 10} more)" if len(mismatched) > 10 else "")
        )
    student.load_state_dict({name: source[name].clone() for name in target}, strict=True)


def build_distiller(config: dict[str, Any], *, student: nn.Module) -> Distiller:
    """The student, the frozen teacher named by ``distill.teacher`` and the ``distill.losses`` terms.

    With ``distill.init_student_from_teacher`` the student starts from the teacher's weights. On a
    resumed run the trainer then restores the student's own checkpoint over them, so a resume never
    reverts the student to the teacher.

    Raises:
        CheckpointError: the teacher cannot be found or loaded.
        ConfigError: no loss terms, an unknown term type, a batch padding an MSAD teacher cannot use,
            or an impossible student initialisation.
    """
    distill_cfg = config["distill"]
    losses_cfg = distill_cfg["losses"]
    if not isinstance(losses_cfg, list) or not losses_cfg:
        raise ConfigError(
            "distill.losses must be a non-empty list of {type: ..., weight: ...} when distill.teacher is set, "
            f"got {losses_cfg!r}"
        )
    teacher, teacher_config = load_teacher(distill_cfg["teacher"])
    divisibility = config["data"]["size_divisibility"]
    if isinstance(teacher, MSADTeacher) and divisibility % SIZE_DIVISIBILITY:
        raise ConfigError(
            f"distill.teacher is an MSAD teacher, which needs batches padded to a multiple of "
            f"{SIZE_DIVISIBILITY}; set data.size_divisibility={SIZE_DIVISIBILITY} (got {divisibility})"
        )
    if distill_cfg["init_student_from_teacher"]:
        init_student_from_teacher(student, teacher, student_config=config, teacher_config=teacher_config)
    terms = [
        build_term(spec, student=student, teacher=teacher, config=config, where=f"distill.losses[{index}]")
        for index, spec in enumerate(losses_cfg)
    ]
    return Distiller(student=student, teacher=teacher, losses=terms)
