"""Checks that a teacher predicts on the same locations/anchors as its student.

Response-based terms (ADL, GID) compare the two heads output by output, so both detectors must be
of the same kind and place their predictions identically: same strides, same anchors per location
and the same classes. A low-resolution student (``p2..p6`` of the 0.5x image, high-resolution
strides) matches a high-resolution teacher (``p3..p7``) because both use strides 8..128. An MSAD
teacher takes part through its shared FCOS, whose head runs on the fused ``F3..F7``: these have the
grid of a low-resolution FCOS student's ``p2..p6``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msadkit.errors import ConfigError, InputError
from msadkit.modeling.dense_detector import DenseDetector
from msadkit.modeling.fcos import FCOS
from msadkit.modeling.retinanet import RetinaNet

__all__ = ["check_same_layout", "check_same_prediction_shape", "plain_detector"]

_PROBE_SHAPES = [(2, 3)]


def plain_detector(teacher: nn.Module, *, term: str) -> DenseDetector:
    """The FCOS/RetinaNet that makes the teacher's predictions (an MSAD teacher's shared FCOS).

    Raises:
        ConfigError: the teacher has no such detector.
    """
    detector = getattr(teacher, "detector", teacher)
    if not isinstance(detector, (FCOS, RetinaNet)):
        raise ConfigError(
            f"distill.losses type {term!r} compares the teacher's and the student's head outputs and needs an "
            f"'fcos', 'retinanet' or MSAD teacher, but the teacher is a {type(teacher).__name__}"
        )
    return detector


def _probe_anchors(model: RetinaNet) -> Tensor:
    """Anchors of a tiny probe grid on every level: equal tensors mean equal anchor layouts."""
    shapes = _PROBE_SHAPES * len(model.strides)
    return torch.cat([a.cpu() for a in model.anchors(shapes)])


def check_same_layout(student: nn.Module, teacher: nn.Module, *, term: str) -> None:
    """Raise :class:`ConfigError` unless both detectors predict on the same locations/anchors.

    Args:
        student: the detector being trained.
        teacher: the frozen teacher.
        term: the ``distill.losses`` type, for the message.
    """
    teacher = plain_detector(teacher, term=term)
    if not isinstance(student, (FCOS, RetinaNet)):
        raise ConfigError(
            f"distill.losses type {term!r} needs an 'fcos' or 'retinanet' student, got {type(student).__name__}"
        )
    why = None
    if type(student) is not type(teacher):
        why = f"the student is a {type(student).__name__} and the teacher a {type(teacher).__name__}"
    elif student.strides != teacher.strides:
        why = f"the student's strides are {student.strides} and the teacher's {teacher.strides}"
    elif student.num_classes != teacher.num_classes:
        why = f"the student has {student.num_classes} classes and the teacher {teacher.num_classes}"
    elif isinstance(student, RetinaNet):
        student_anchors, teacher_anchors = _probe_anchors(student), _probe_anchors(teacher)
        if student_anchors.shape != teacher_anchors.shape or not torch.equal(student_anchors, teacher_anchors):
            why = (
                "their anchors differ (model.retinanet.anchor_base_sizes / aspect_ratios): the student has "
                f"{student.anchor_generator.num_anchors_per_location} anchors per location, the teacher "
                f"{teacher.anchor_generator.num_anchors_per_location}"
            )
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
