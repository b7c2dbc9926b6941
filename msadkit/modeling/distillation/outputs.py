"""What distillation losses see of the student and the teacher on one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from msadkit.modeling.dense_detector import DenseDetector

__all__ = ["StudentOutputs", "TeacherOutputs"]


@dataclass
class StudentOutputs:
    """What the distillation losses see of the student on one batch.

    Attributes:
        model: the student detector (for its assignment / decoding methods).
        levels: the ``L`` FPN maps the head ran on, ``(N, C, Hi, Wi)``, finest first.
        predictions: the head's raw per-level outputs.
        image_shape: padded ``(H, W)`` of the batch the student was given (before any downsampling).
    """

    model: "DenseDetector"
    levels: list[Tensor]
    predictions: dict[str, list[Tensor]]
    image_shape: tuple[int, int]


@dataclass
class TeacherOutputs:
    """What the distillation losses see of the teacher on one batch (all without gradient).

    Attributes:
        levels: the teacher's maps aligned level by level with the student's ``levels`` (for an MSAD
            teacher the fused maps F3..F7, for a plain detector its own FPN levels).
        predictions: the teacher head's raw outputs on ``levels`` (None when not computed).
        model: the teacher's detector (for decoding its boxes), or None.
        extras: anything else a teacher exposes (MSAD: "fusion_weights" (N, L, 2)).
    """

    levels: list[Tensor]
    predictions: dict[str, list[Tensor]] | None = None
    model: nn.Module | None = None
    extras: dict[str, Any] = field(default_factory=dict)
