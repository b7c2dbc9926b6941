"""FCOS losses: focal classification, centerness-weighted GIoU and centerness BCE (docs/methods.md §1.5)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from msadkit.modeling.detectors.fcos_targets import FCOSTargets, centerness_target
from msadkit.utils.distributed import reduce_mean

__all__ = ["ltrb_giou_loss", "sigmoid_focal_loss_sum", "fcos_losses"]


def ltrb_giou_loss(pred: Tensor, target: Tensor, *, smoothing: float = 0.0) -> Tensor:
    """GIoU loss ``1 - GIoU`` between boxes given as distances from a common point.

    Both boxes share the anchor point, so their intersection and enclosing box follow from the
    per-side minimum and maximum of the distances. The IoU term is
    ``(intersection + smoothing) / (union + smoothing)``; the MSAD code adds 1 there (its
    ``IOULoss``), on boxes measured in strides, which lowers the loss of boxes one or two strides
    wide noticeably (docs/deviations.md). The enclosing-box term has no smoothing in either.

    Args:
        pred: ``(R, 4)`` non-negative ``(l, t, r, b)``.
        target: ``(R, 4)`` positive ``(l, t, r, b)`` in the same units.
        smoothing: added to intersection and union (0 for the plain GIoU, 1 for the MSAD code).

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
    if smoothing:
        iou = (intersection + smoothing) / (union + smoothing)
    else:
        iou = intersection / union.clamp(min=1e-7)
    enclosing = (enclose_w * enclose_h).clamp(min=1e-7)
    giou = iou - (enclosing - union) / enclosing
    return 1 - giou


def sigmoid_focal_loss_sum(logits: Tensor, labels: Tensor, *, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over all locations and classes, with integer labels.

    The same value as ``torchvision.ops.sigmoid_focal_loss(logits, one_hot(labels), alpha, gamma,
    reduction="sum")``, where a label ``K`` (or any value outside ``[0, K)``) has no positive
    class. Every entry is first scored as a negative, ``-(1 - alpha) * p**gamma * log(1 - p)``; the
    few positive entries are then scored as ``-alpha * (1 - p)**gamma * log p`` instead. This runs
    about half as many full-size ``(N, R, K)`` operations as the one-hot form (forward and
    backward), and those dominate the loss time on large images.

    Args:
        logits: ``(N, R, K)`` classification logits.
        labels: ``(N, R)`` class index per location, ``K`` for background.
        alpha: weight of the positives (negatives get ``1 - alpha``); negative disables weighting.
        gamma: focusing exponent.

    Returns:
        A scalar tensor.
    """
    num_classes = logits.shape[-1]
    probs = logits.sigmoid()
    # log(1 - p) = logsigmoid(-x) and log p = logsigmoid(x) stay finite for large |x|.
    negative_terms = probs.pow(gamma) * F.logsigmoid(-logits)
    positive = (labels >= 0) & (labels < num_classes)
    index = (*positive.nonzero(as_tuple=True), labels[positive])
    positive_terms = (1 - probs[index]).pow(gamma) * F.logsigmoid(logits[index])
    # The product's output is not saved by autograd, so it may be written into; the positive
    # entries are replaced by zero here and counted through ``positive_terms``.
    negative_terms.index_put_(index, positive_terms.new_zeros(()))
    positive_weight, negative_weight = (alpha, 1 - alpha) if alpha >= 0 else (1.0, 1.0)
    # The class weights multiply the two sums rather than the full-size tensor.
    return -(negative_weight * negative_terms.sum() + positive_weight * positive_terms.sum())


def fcos_losses(
    cls_logits: Tensor,
    bbox_reg: Tensor,
    centerness: Tensor,
    targets: FCOSTargets,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    giou_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """The three FCOS losses of one branch.

    Args:
        cls_logits: ``(N, R, K)`` over all levels.
        bbox_reg: ``(N, R, 4)`` predicted ``(l, t, r, b)`` in stride units.
        centerness: ``(N, R)`` logits.
        targets: from :func:`~msadkit.modeling.detectors.fcos_targets.assign_fcos_targets`.
        giou_smoothing: see :func:`ltrb_giou_loss` (``model.fcos.giou_smoothing``).

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
    loss_cls = sigmoid_focal_loss_sum(cls_logits, labels, alpha=focal_alpha, gamma=focal_gamma)
    loss_cls = loss_cls / num_pos.clamp(min=1.0)

    reg_pred = bbox_reg.float()[positive]
    reg_target = targets.reg_targets[positive]
    ctr_logits = centerness.float()[positive]
    ctr_target = centerness_target(reg_target)
    # The sum of centerness targets is averaged over processes like the positive count. Every
    # process makes this collective call, also one whose batch has no positive location, or the
    # processes' collectives fall out of step (a gloo size error, an NCCL hang).
    ctr_sum = reduce_mean(ctr_target.sum())
    if reg_target.numel() == 0:
        # Keep the graph connected so every parameter gets a (zero) gradient under DDP; in
        # float32 like the losses of a batch with positives, also for bf16 predictions.
        zero = bbox_reg.float().sum() * 0 + centerness.float().sum() * 0
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": zero, "loss_fcos_ctr": zero.clone()}
    giou_losses = ltrb_giou_loss(reg_pred, reg_target, smoothing=giou_smoothing)
    loss_loc = (giou_losses * ctr_target).sum() / ctr_sum.clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum") / num_pos.clamp(min=1.0)
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}
