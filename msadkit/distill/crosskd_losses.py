"""The pieces of CrossKD (Wang et al., CVPR 2024, arXiv 2306.11369) that are plain tensor functions.

Re-implemented from the official ``jbwang1997/CrossKD`` at 87e156a: the feature-statistics
alignment of ``mmdet/models/detectors/crosskd_retinanet.py`` (``align_scale``), the classification
KD loss ``KDQualityFocalLoss`` of ``mmdet/models/losses/kd_loss.py`` and the aligned IoU / GIoU
losses of ``mmdet/models/losses/iou_loss.py`` with their epsilons.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BOX_LOSSES", "align_statistics", "kd_quality_focal_loss", "aligned_box_loss"]

BOX_LOSSES = ("giou", "iou")


def align_statistics(student: Tensor, teacher: Tensor, *, eps: float = 1e-6) -> Tensor:
    """The student map standardised per channel and given the teacher's per-channel statistics.

    Per channel ``c`` over all images and locations: ``(s - mean_s) / (std_s + eps) * std_t + mean_t``
    with unbiased standard deviations (0 for a single value). The teacher's later layers were trained on maps of the
    teacher's scale; a student's map of another scale would push them out of their range.

    Args:
        student: ``(N, C, H, W)``.
        teacher: ``(N, C, H, W)`` (a fixed target: detached here).

    Returns:
        ``(N, C, H, W)`` in the student's dtype.
    """
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"align_statistics: {student.shape[1]} student channels but {teacher.shape[1]} teacher channels"
        )
    dtype = torch.promote_types(student.dtype, torch.float32)
    s = student.to(dtype)
    t = teacher.detach().to(dtype)
    # One value per channel (a 1x1 map of a batch of one) has no unbiased deviation: the official
    # code gets NaN there; a deviation of 0 hands the teacher's value on instead.
    correction = 1 if s.numel() // s.shape[1] > 1 else 0
    s_mean = s.mean(dim=(0, 2, 3), keepdim=True)
    s_std = s.std(dim=(0, 2, 3), keepdim=True, correction=correction)
    t_mean = t.mean(dim=(0, 2, 3), keepdim=True)
    t_std = t.std(dim=(0, 2, 3), keepdim=True, correction=correction)
    return ((s - s_mean) / (s_std + eps) * t_std + t_mean).to(student.dtype)


def kd_quality_focal_loss(student_logits: Tensor, teacher_logits: Tensor, *, beta: float = 1.0) -> Tensor:
    """Element-wise ``BCE(sigmoid(s), q) * |sigmoid(s) - q|^beta`` with soft targets ``q = sigmoid(t)``.

    A sigmoid cross-entropy toward the teacher's probabilities, weighted like Quality Focal Loss by
    how far the student is from them, so the many locations where both agree contribute little.

    Args:
        student_logits: ``(..., K)`` logits (here the cross-head's).
        teacher_logits: ``(..., K)`` logits (a fixed target: detached here).
        beta: focusing exponent, ``>= 0``.

    Returns:
        A tensor of the inputs' shape.
    """
    q = teacher_logits.detach().sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(student_logits, q, reduction="none")
    return cross_entropy * (student_logits.sigmoid() - q).abs().pow(beta)


def aligned_box_loss(pred: Tensor, target: Tensor, *, kind: str) -> Tensor:
    """Row-wise box loss between ``(..., 4)`` ``(x1, y1, x2, y2)`` boxes.

    ``"giou"``: ``1 - GIoU`` with union and enclosing area clamped to at least 1e-7 (RetinaNet's
    ``GIoULoss``). ``"iou"``: ``-log(max(IoU, 1e-6))`` with the union clamped to at least 1e-6
    (FCOS's ``IoULoss``). Both are invariant to shifting and to scaling each axis of a pair of
    boxes, so boxes given relative to a common point or anchor give the same loss.

    Returns:
        ``(...)`` losses.
    """
    if kind not in BOX_LOSSES:
        raise ValueError(f"kind must be one of {BOX_LOSSES}, got {kind!r}")
    eps = 1e-7 if kind == "giou" else 1e-6
    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_t = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    inner = (torch.minimum(pred[..., 2:], target[..., 2:]) - torch.maximum(pred[..., :2], target[..., :2])).clamp(min=0)
    overlap = inner[..., 0] * inner[..., 1]
    union = (area_p + area_t - overlap).clamp(min=eps)
    iou = overlap / union
    if kind == "iou":
        return -iou.clamp(min=eps).log()
    outer = (torch.maximum(pred[..., 2:], target[..., 2:]) - torch.minimum(pred[..., :2], target[..., :2])).clamp(min=0)
    enclosing = (outer[..., 0] * outer[..., 1]).clamp(min=eps)
    return 1 - (iou - (enclosing - union) / enclosing)
