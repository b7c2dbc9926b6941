"""What a term may assume of the models it distils between, checked when the term is built.

Response-based terms (ADL, GID) compare the two heads output by output, so both detectors must be
of the same kind and place their predictions identically: same strides, same anchors per location
and the same classes (each detector says how it differs, :meth:`DenseDetector.layout_mismatch`). A
low-resolution student (``p2..p6`` of the 0.5x image, high-resolution strides) matches a
high-resolution teacher (``p3..p7``) because both use strides 8..128. An MSAD teacher takes part
through its shared FCOS, whose head runs on the fused ``F3..F7``: these have the grid of a
low-resolution FCOS student's ``p2..p6``.
"""

from __future__ import annotations

from torch import Tensor, nn

from msadkit.errors import ConfigError, InputError
from msadkit.modeling.detectors.dense_detector import DenseDetector
from msadkit.modeling.levels import HIGH_RES_FEATURES, LOW_RES_FEATURES

__all__ = [
    "levels_pair_up",
    "check_same_layout",
    "check_same_prediction_shape",
    "dense_detector_of",
    "feature_channels",
    "fpn_widths",
]


def dense_detector_of(model: nn.Module, *, term: str, role: str = "teacher") -> DenseDetector:
    """The dense detector that makes ``model``'s predictions (an MSAD teacher's shared FCOS).

    Raises:
        ConfigError: ``model`` has no such detector.
    """
    detector = getattr(model, "dense_detector", None)
    if not isinstance(detector, DenseDetector):
        raise ConfigError(
            f"distill.losses type {term!r} compares the teacher's and the student's head outputs and needs an "
            f"'fcos', 'retinanet' or MSAD {role}, but the {role} is a {type(model).__name__}"
        )
    return detector


def feature_channels(model: nn.Module, *, term: str, role: str) -> int:
    """Channels of the FPN maps ``model``'s head runs on.

    Raises:
        ConfigError: ``model`` is not a detector with an FPN.
    """
    detector = getattr(model, "dense_detector", None)
    channels = getattr(getattr(detector, "backbone", None), "out_channels", None)
    if not isinstance(channels, int):
        raise ConfigError(
            f"distill.losses type {term}: cannot tell the FPN channels of the {role} ({type(model).__name__}); "
            "it has no FPN backbone"
        )
    return channels


def fpn_widths(student: nn.Module, teacher: nn.Module, *, term: str) -> dict[str, int]:
    """``{"student_channels": Cs, "teacher_channels": Ct}``, the FPN widths as every term's constructor
    takes them (its adapters map the student's ``(N, Cs, H, W)`` maps to ``(N, Ct, H, W)``).

    Raises:
        ConfigError: either model is not a detector with an FPN (:func:`feature_channels`).
    """
    return {
        "student_channels": feature_channels(student, term=term, role="student"),
        "teacher_channels": feature_channels(teacher, term=term, role="teacher"),
    }


def levels_pair_up(student: nn.Module, teacher: nn.Module) -> bool:
    """Whether the student's level ``i`` covers the image as the plain teacher's level ``i`` does.

    True at one resolution with the same levels, and across resolutions (``distill.cross_resolution``)
    for a student on the 0.5x copy using ``p2..p6`` and a teacher on the image using ``p3..p7``.
    """
    student_side = (student.input_downsample, tuple(student.in_features))
    teacher_side = (teacher.input_downsample, tuple(teacher.in_features))
    return student_side == teacher_side or (student_side, teacher_side) == (
        (2, LOW_RES_FEATURES),
        (1, HIGH_RES_FEATURES),
    )


def check_same_layout(student: nn.Module, teacher: nn.Module, *, term: str) -> None:
    """Raise :class:`ConfigError` unless both detectors predict on the same locations/anchors.

    Args:
        student: the detector being trained.
        teacher: the frozen teacher.
        term: the ``distill.losses`` type, for the message.
    """
    teacher_detector = dense_detector_of(teacher, term=term)
    if not isinstance(student, DenseDetector):
        raise ConfigError(
            f"distill.losses type {term!r} needs an 'fcos' or 'retinanet' student, got {type(student).__name__}"
        )
    why = student.layout_mismatch(teacher_detector)
    if why is not None:
        raise ConfigError(
            f"distill.losses type {term!r} compares predictions location by location, so teacher and student "
            f"must be the same detector type with the same strides, anchors and classes; here {why}"
        )


def check_same_prediction_shape(student: Tensor, teacher: Tensor, *, term: str) -> None:
    """Raise :class:`InputError` if flattened student and teacher predictions differ in shape.

    Equal strides give equal grids only when both models see images of matching size; a teacher fed
    another resolution (or other levels) ends up here.
    """
    if student.shape != teacher.shape:
        raise InputError(
            f"distillation term {term!r}: student predictions have shape {tuple(student.shape)} but the "
            f"teacher's have {tuple(teacher.shape)}; both must predict on the same feature grids"
        )
