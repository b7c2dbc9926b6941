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

__all__ = ["build_distiller", "check_resolution_pairing", "init_student_from_teacher"]


def init_student_from_teacher(
    student: nn.Module, teacher: nn.Module, *, student_config: dict[str, Any], teacher_config: dict[str, Any]
) -> None:
    """Copy the teacher's backbone, FPN (the levels the student has) and head into the student.

    Every parameter and buffer of the student must come from the teacher.

    Raises:
        ConfigError: a student tensor has no counterpart in the teacher (listed), or shapes
            differ (init needs equal widths).
    """
    s_backbone, t_backbone = student_config["model"]["backbone"]["name"], teacher_config["model"]["backbone"]["name"]
    if s_backbone != t_backbone:
        # An R-50's tensor names are a subset of an R-101's with the same shapes: the copy would
        # "succeed" with a cut-down R-101.
        raise ConfigError(
            f"distill.init_student_from_teacher copies the teacher's backbone, but the student's is {s_backbone} "
            f"and the teacher's {t_backbone}; initialise from the teacher only between equal backbones"
        )
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


def check_resolution_pairing(config: dict[str, Any], teacher: nn.Module, teacher_config: dict[str, Any]) -> None:
    """Refuse a student/teacher pair whose levels ``distill.cross_resolution`` cannot align.

    A student's level ``i`` is paired with the teacher's level ``i``: at one resolution both are
    ``p3..p7``; across resolutions the student sees the 0.5x copy and uses ``p2..p6``
    (:mod:`msadkit.modeling.levels`), which cover the image as the teacher's ``p3..p7`` do.

    Raises:
        ConfigError: the resolutions differ without ``distill.cross_resolution``, or the key is set
            for a pair that is not a high-resolution teacher and a low-resolution student, or the
            batch padding does not keep the two pyramids aligned.
    """
    student_res = config["model"]["resolution"]
    if isinstance(teacher, MSADTeacher):
        return  # its fused levels F3..F7 are built to pair with a low-resolution student's p2..p6
    teacher_res = teacher_config["model"]["resolution"]
    if not config["distill"]["cross_resolution"]:
        if student_res != teacher_res:
            raise ConfigError(
                f"the student sees the {student_res}-resolution image (model.resolution) and the teacher the "
                f"{teacher_res}-resolution one: set distill.cross_resolution=true to pair student level l with "
                "teacher level l+1"
            )
        return
    if (student_res, teacher_res) != ("low", "high"):
        raise ConfigError(
            "distill.cross_resolution pairs a low-resolution student with a high-resolution teacher: the student has "
            f"model.resolution={student_res}, the teacher's run model.resolution={teacher_res}"
        )
    divisibility = config["data"]["size_divisibility"]
    if divisibility % SIZE_DIVISIBILITY:
        raise ConfigError(
            f"distill.cross_resolution needs batches padded to a multiple of {SIZE_DIVISIBILITY} so that the 0.5x "
            f"copy's p2..p6 line up with the teacher's p3..p7; set data.size_divisibility={SIZE_DIVISIBILITY} "
            f"(got {divisibility})"
        )


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
    check_resolution_pairing(config, teacher, teacher_config)
    if distill_cfg["init_student_from_teacher"]:
        init_student_from_teacher(student, teacher, student_config=config, teacher_config=teacher_config)
    terms = [
        build_term(spec, student=student, teacher=teacher, where=f"distill.losses[{index}]")
        for index, spec in enumerate(losses_cfg)
    ]
    return Distiller(student=student, teacher=teacher, losses=terms)
