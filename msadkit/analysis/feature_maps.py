"""Teacher and student feature pyramids for alignment analysis: channel-mean maps and errors.

The distillation target of a student is what its teacher hands to the loss terms
(``distillation_outputs(...).levels``): for an MSAD teacher the fused maps ``F3..F7``, for a plain
detector its own FPN levels. An MSAD teacher also shows the high-resolution ``P3..P7`` and the
low-resolution ``P2'..P6'`` it fused, and its C-FF weights. Levels are named after the teacher's
high-resolution level with the same stride (a low-resolution student's ``p2`` imitates ``F3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "AlignmentFeatures",
    "level_names",
    "channel_mean",
    "alignment_error_map",
    "level_alignment_errors",
    "teacher_pyramids",
    "student_levels",
    "alignment_features",
]


@dataclass
class AlignmentFeatures:
    """Feature pyramids of a teacher and one or more students on one batch (no gradient).

    Attributes:
        level_names: one name per level, finest first (``"P3 (stride 8)"``, ...).
        teacher: named teacher pyramids, each a list of ``(N, C, Hi, Wi)``: ``"high-res"``,
            ``"low-res"``, ``"fused"`` for an MSAD teacher, ``"FPN"`` for a plain detector.
        target: the pyramid the students are distilled towards (one of ``teacher``).
        target_name: its key in ``teacher``.
        students: label -> the student's ``(N, C, Hi, Wi)`` levels (the maps its head runs on).
        fusion_weights: ``(N, L, 2)`` C-FF weights (high, low) of an MSAD teacher, else None.
    """

    level_names: list[str]
    teacher: dict[str, list[Tensor]]
    target: list[Tensor]
    target_name: str
    students: dict[str, list[Tensor]] = field(default_factory=dict)
    fusion_weights: Tensor | None = None

    def errors(self) -> dict[str, list[float]]:
        """Per student, the per-level alignment error against the target."""
        return {label: level_alignment_errors(levels, self.target) for label, levels in self.students.items()}


def level_names(strides: Sequence[int]) -> list[str]:
    """``"P{log2(stride)} (stride s)"`` for each stride in input pixels."""
    return [f"P{int(round(math.log2(s)))} (stride {s})" for s in strides]


def channel_mean(feature: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)``: the mean over channels, a single map to draw per level."""
    if feature.dim() != 4:
        raise ValueError(f"channel_mean: expected (N, C, H, W), got {tuple(feature.shape)}")
    return feature.float().mean(dim=1)


def alignment_error_map(student: Tensor, target: Tensor) -> Tensor:
    """Per-location absolute alignment error ``mean_c |student - target|``, ``(N, H, W)``.

    Its mean over locations and images is the per-level value of :func:`level_alignment_errors`,
    the L1 distance an MSAD feature loss averages (before its weight).

    Raises:
        ValueError: the two maps differ in shape.
    """
    if student.shape != target.shape or student.dim() != 4:
        raise ValueError(
            f"alignment_error_map: student {tuple(student.shape)} and target {tuple(target.shape)} must be "
            "equal (N, C, H, W) shapes"
        )
    return (student.float() - target.float()).abs().mean(dim=1)


def level_alignment_errors(student: Sequence[Tensor], target: Sequence[Tensor]) -> list[float]:
    """Mean absolute difference over ``N, C, H, W`` at each level; NaN where shapes differ (a
    student of another FPN width is compared through an adapter the exported weights lack)."""
    if len(student) != len(target):
        raise ValueError(f"level_alignment_errors: {len(student)} student levels but {len(target)} target levels")
    errors = []
    for s, t in zip(student, target):
        errors.append(float((s.float() - t.float()).abs().mean()) if s.shape == t.shape else math.nan)
    return errors


@torch.no_grad()
def teacher_pyramids(
    teacher: nn.Module, images: Tensor, image_sizes: list[tuple[int, int]]
) -> tuple[dict[str, list[Tensor]], str, Tensor | None]:
    """The teacher's pyramids, the name of the distillation target among them and C-FF weights.

    Returns:
        ``(pyramids, target_name, fusion_weights)``; an MSAD teacher (one with
        ``branch_features``) gives ``{"high-res", "low-res", "fused"}``, ``"fused"`` and its
        ``(N, L, 2)`` weights; another detector ``{"FPN": levels}``, ``"FPN"``, None.
    """
    if hasattr(teacher, "branch_features"):
        branches = teacher.branch_features(images)
        pyramids = {
            "high-res": list(branches["high"]),
            "low-res": list(branches["low"]),
            "fused": list(branches["fused"]),
        }
        return pyramids, "fused", branches.get("weights")
    outputs = teacher.distillation_outputs(images, image_sizes, need_predictions=False)
    return {"FPN": list(outputs.levels)}, "FPN", outputs.extras.get("fusion_weights")


@torch.no_grad()
def student_levels(student: nn.Module, images: Tensor) -> list[Tensor]:
    """The maps a student's head runs on (its distilled features), finest first."""
    return list(student.select_levels(student.extract_features(images)))


def alignment_features(
    teacher: nn.Module,
    students: Mapping[str, nn.Module],
    images: Tensor,
    image_sizes: list[tuple[int, int]],
) -> AlignmentFeatures:
    """Run a teacher and its students on one batch and collect what the figures need.

    Args:
        teacher: the frozen teacher (eval mode).
        students: label -> student detector (e.g. ``{"student after distillation": ...,
            "baseline (no teacher)": ...}``).
        images: ``(N, 3, H, W)`` normalised batch padded as the teacher needs.
        image_sizes: valid ``(h, w)`` per image.

    Raises:
        ValueError: a student has a different number of levels than the teacher's target.
    """
    pyramids, target_name, weights = teacher_pyramids(teacher, images, image_sizes)
    target = pyramids[target_name]
    strides = getattr(teacher, "strides", None) or [int(round(images.shape[-1] / t.shape[-1])) for t in target]
    features = AlignmentFeatures(
        level_names=level_names(strides),
        teacher=pyramids,
        target=target,
        target_name=target_name,
        fusion_weights=weights,
    )
    for label, student in students.items():
        levels = student_levels(student, images)
        if len(levels) != len(target):
            raise ValueError(f"student {label!r} has {len(levels)} levels, the teacher's target has {len(target)}")
        features.students[label] = levels
    return features
