"""What distillation losses see of the student and the teacher on one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

__all__ = ["DenseOutputs", "StudentOutputs", "TeacherOutputs"]


@dataclass
class DenseOutputs:
    """A dense head's outputs flattened over all levels (``R`` locations/anchors), decoded.

    Attributes:
        cls_logits: ``(N, R, K)`` classification logits.
        box_reg: ``(N, R, 4)`` raw box outputs (RetinaNet deltas, FCOS stride-normalised ltrb).
        boxes: ``(N, R, 4)`` float32 decoded ``(x1, y1, x2, y2)`` boxes in input pixels (no gradient).
        scores: ``(N, R, K)`` float32 probabilities (no gradient).
    """

    cls_logits: Tensor
    box_reg: Tensor
    boxes: Tensor
    scores: Tensor


@dataclass
class StudentOutputs:
    """What the distillation losses see of the student on one batch.

    Attributes:
        model: the student detector, a ``DenseDetector`` (for its assignment / decoding methods).
        levels: the ``L`` FPN maps the head ran on, ``(N, C, Hi, Wi)``, finest first.
        predictions: the head's raw per-level outputs.
        image_shape: padded ``(H, W)`` of the batch the student was given (before any downsampling).
        image_sizes: valid ``(h, w)`` of each image in that batch (None: the padded size).
    """

    model: nn.Module
    levels: list[Tensor]
    predictions: dict[str, list[Tensor]]
    image_shape: tuple[int, int]
    image_sizes: list[tuple[int, int]] | None = None


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
