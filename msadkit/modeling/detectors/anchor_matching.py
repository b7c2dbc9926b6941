"""Anchor matching for RetinaNet (detectron2's rule) and the checked form of training targets.

An anchor whose best IoU with a ground-truth box is below 0.4 is background, at least 0.5 is
foreground, in between is ignored; with ``allow_low_quality_matches`` every ground-truth box also
claims the anchors of highest IoU with it (ties included).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from msadkit.errors import InputError

__all__ = ["AnchorAssignment", "match_anchors", "checked_targets", "BACKGROUND", "IGNORE"]

BACKGROUND = -1
"""Matched index of a background anchor."""
IGNORE = -2
"""Matched index of an anchor that takes part in no loss."""


def match_anchors(
    iou: Tensor, *, thresholds: tuple[float, float] = (0.4, 0.5), allow_low_quality_matches: bool = True
) -> Tensor:
    """Match every anchor to a ground-truth box, the background or nothing.

    Args:
        iou: ``(M, R)`` IoU of M ground-truth boxes with R anchors.
        thresholds: ``(low, high)``: best IoU ``< low`` is background, ``>= high`` foreground,
            in between ignored.
        allow_low_quality_matches: also make foreground every anchor whose IoU with some box equals
            that box's highest IoU over all anchors (ties included). Such an anchor is matched to
            its own best box, as in detectron2. A box that overlaps no anchor at all (highest IoU 0)
            rescues nothing, otherwise every anchor would tie with it.

    Returns:
        ``(R,)`` int64: index of the matched box for foreground anchors, :data:`BACKGROUND` (-1) or
        :data:`IGNORE` (-2).
    """
    low, high = thresholds
    num_anchors = iou.shape[1]
    if iou.shape[0] == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=iou.device)
    best_iou, best_box = iou.max(dim=0)
    matched = best_box.clone()
    matched[best_iou < high] = IGNORE
    matched[best_iou < low] = BACKGROUND
    if allow_low_quality_matches:
        best_per_box = iou.max(dim=1, keepdim=True).values
        is_best = (iou == best_per_box) & (best_per_box > 0)
        rescued = is_best.any(dim=0)
        matched[rescued] = best_box[rescued]
    return matched


class AnchorAssignment(NamedTuple):
    """Training targets of all anchors of a batch.

    Attributes:
        matched_idxs: ``(N, R)`` int64 index of the matched ground-truth box of each foreground
            anchor, :data:`BACKGROUND` (-1) or :data:`IGNORE` (-2).
        labels: ``(N, R)`` int64 class in ``[0, K)`` for foreground anchors, ``K`` for background,
            -1 for ignored anchors.
        matched_boxes: ``(N, R, 4)`` float32 xyxy ground-truth box of foreground anchors, zeros
            elsewhere.
    """

    matched_idxs: Tensor
    labels: Tensor
    matched_boxes: Tensor

    @property
    def fg_mask(self) -> Tensor:
        """``(N, R)`` bool, foreground anchors."""
        return self.matched_idxs >= 0

    @property
    def ignore_mask(self) -> Tensor:
        """``(N, R)`` bool, anchors excluded from every loss (IoU in ``[low, high)``)."""
        return self.matched_idxs == IGNORE

    @property
    def valid_mask(self) -> Tensor:
        """``(N, R)`` bool, anchors of the classification loss (foreground and background)."""
        return self.matched_idxs != IGNORE


def checked_targets(targets: list[dict[str, Tensor]], num_classes: int) -> list[tuple[Tensor, Tensor]]:
    """``(boxes (M, 4), labels (M,))`` per image, or :class:`InputError` naming what is wrong."""
    checked = []
    for i, target in enumerate(targets):
        if "boxes" not in target or "labels" not in target:
            raise InputError(f"targets[{i}] must have keys 'boxes' and 'labels', got {sorted(target)}")
        boxes, labels = target["boxes"], target["labels"]
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise InputError(f"targets[{i}]['boxes'] must have shape (M, 4), got {tuple(boxes.shape)}")
        if labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            raise InputError(
                f"targets[{i}]['labels'] must have shape ({boxes.shape[0]},) to match the boxes, "
                f"got {tuple(labels.shape)}"
            )
        if boxes.is_floating_point() and not torch.isfinite(boxes).all():
            raise InputError(f"targets[{i}]['boxes'] contain inf or NaN values")
        if boxes.numel() and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            raise InputError(f"targets[{i}]['boxes'] must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
        if labels.numel() and (labels.is_floating_point() or labels.min() < 0 or labels.max() >= num_classes):
            raise InputError(
                f"targets[{i}]['labels'] must be integer classes in [0, {num_classes}), "
                f"got values {labels.unique().tolist()}"
            )
        checked.append((boxes.float(), labels.long()))
    return checked
