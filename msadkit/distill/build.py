"""Build a :class:`Distiller` from a config whose ``distill.teacher`` is set.

The ``model`` section describes the student (built by ``msadkit.modeling.registry.build_model``);
the teacher comes from a finished run (a run folder or a ``model_final.pth`` file), rebuilt from
its own config and loaded strictly by :func:`msadkit.modeling.loading.load_run_model`. The loss
terms come from ``distill.losses`` through the term registry.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msadkit.distill.distiller import Distiller
from msadkit.distill.registry import build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.msad_teacher import SIZE_DIVISIBILITY, MSADTeacher
from msadkit.modeling.loading import load_run_model

__all__ = ["build_distiller", "init_student_from_teacher"]


def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, *, student_config: dict[str, Any], teacher_config: dict[str, Any]
) -> None:
    """Copy the teacher's backbone, FPN (the levels the student has) and head into the student.

    Every parameter and buffer of the student must come from the teacher.

    Raises:
        ConfigError: a student tensor has no counterpart in the teacher (listed), or shapes
            differ (init needs equal widths).
    """
    source = teacher.dense_detector.state_dict()
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
    teacher, teacher_config = load_run_model(distill_cfg["teacher"])
    divisibility = config["data"]["size_divisibility"]
    if isinstance(teacher, MSADTeacher) and divisibility % SIZE_DIVISIBILITY:
        raise ConfigError(
            f"distill.teacher is an MSAD teacher, which needs batches padded to a multiple of "
            f"{SIZE_DIVISIBILITY}; set data.size_divisibility={SIZE_DIVISIBILITY} (got {divisibility})"
        )
    if distill_cfg["init_student_from_teacher"]:
        init_student_from_teacher(student, teacher, student_config=config, teacher_config=teacher_config)
    terms = [
        build_term(spec, student=student, teacher=teacher, where=f"distill.losses[{index}]")
        for index, spec in enumerate(losses_cfg)
    ]
    return Distiller(student=student, teacher=teacher, losses=terms)
