"""FCOS losses: focal classification, centerness-weighted GIoU and centerness BCE (METHODS.md §1.5)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from msadkit.modeling.fcos_targets import FCOSTargets, centerness_target
from msadkit.utils.distributed import reduce_mean

__all__ = ["ltrb_giou_loss", "fcos_losses"]


def ltrb_giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """GIoU loss ``1 - GIoU`` between boxes given as distances from a common point.

    Both boxes share the anchor point, so their intersection and enclosing box follow from the
    per-side minimum and maximum of the distances.

    Args:
        pred: ``(R, 4)`` non-negative ``(l, t, r, b)``.
        target: ``(R, 4)`` positive ``(l, t, r, b)`` in the same units.

    Returns:
        ``(R,)`` losses in ``[0, 2]``.
    """
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    inter_h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    enclose_w = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])
    enclose_h = torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3])
    intersection = inter_w * inter_h
    union = pred_area + target_area - intersection
    iou = intersection / union.clamp(min=1e-7)
    enclosing = (enclose_w * enclose_h).clamp(min=1e-7)
    giou = iou - (enclosing - union) / enclosing
    return 1 - giou


def fcos_losses(
    cls_logits: Tensor,
    bbox_reg: Tensor,
    centerness: Tensor,
    targets: FCOSTargets,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, Tensor]:
    """The three FCOS losses of one branch.

    Args:
        cls_logits: ``(N, R, K)`` over all levels.
        bbox_reg: ``(N, R, 4)`` predicted ``(l, t, r, b)`` in stride units.
        centerness: ``(N, R)`` logits.
        targets: from :func:`~msadkit.modeling.fcos_targets.assign_fcos_targets`.

    Returns:
        ``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}``: focal loss summed and divided by
        the number of positives (averaged over processes), GIoU weighted by the centerness targets
        and divided by their sum, centerness BCE divided by the number of positives.
    """
    num_classes = cls_logits.shape[-1]
    cls_logits = cls_logits.float()
    labels = targets.labels
    positive = labels != num_classes
    num_pos = reduce_mean(positive.sum())
    one_hot = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(cls_logits.dtype)
    loss_cls = sigmoid_focal_loss(cls_logits, one_hot, alpha=focal_alpha, gamma=focal_gamma, reduction="sum")
    loss_cls = loss_cls / num_pos.clamp(min=1.0)

    reg_pred = bbox_reg.float()[positive]
    reg_target = targets.reg_targets[positive]
    ctr_logits = centerness.float()[positive]
    if reg_target.numel() == 0:
        # Keep the graph connected so every parameter gets a (zero) gradient under DDP.
        zero = bbox_reg.sum() * 0 + centerness.sum() * 0
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": zero, "loss_fcos_ctr": zero.clone()}
    ctr_target = centerness_target(reg_target)
    # The sum of centerness targets is averaged over processes like the positive count.
    ctr_sum = reduce_mean(ctr_target.sum())
    loss_loc = (ltrb_giou_loss(reg_pred, reg_target) * ctr_target).sum() / ctr_sum.clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum") / num_pos.clamp(min=1.0)
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
