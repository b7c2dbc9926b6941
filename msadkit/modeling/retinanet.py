"""RetinaNet: anchor assignment, focal / box losses and post-processing (docs/methods.md §2.3, §3.4).

Assignment follows detectron2's RetinaNet: an anchor whose best IoU with a ground-truth box is
below 0.4 is background, at least 0.5 is foreground, in between is ignored; with
``allow_low_quality_matches`` every ground-truth box also claims the anchors of highest IoU with
it (ties included), so no box is left without a foreground anchor. The assignment is public
because distillers need it: ADL excludes the ignored anchors, GID assigns its instance boxes to
anchors with the same rule (:meth:`RetinaNet.assign_boxes`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from msadkit.errors import InputError
from msadkit.modeling.anchors import AnchorGenerator
from msadkit.modeling.box_coder import BoxCoder
from msadkit.modeling.dense_detector import DenseDetector, permute_to_nhwk

__all__ = ["RetinaNet", "AnchorAssignment", "match_anchors", "BACKGROUND", "IGNORE", "BOX_LOSSES"]

BACKGROUND = -1
"""Matched index of a background anchor."""
IGNORE = -2
"""Matched index of an anchor that takes part in no loss."""
BOX_LOSSES = ("smooth_l1", "giou")


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


def _checked_targets(targets: list[dict[str, Tensor]], num_classes: int) -> list[tuple[Tensor, Tensor]]:
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


class RetinaNet(DenseDetector):
    """RetinaNet with sigmoid focal loss and smooth-L1 (or GIoU) box loss.

    Args:
        backbone: images -> dict of FPN maps.
        head: a :class:`~msadkit.modeling.retinanet_head.RetinaNetHead` (or any head with the same
            outputs ``{"cls_logits", "bbox_deltas"}``).
        num_classes: K.
        in_features: FPN levels used, finest first.
        strides: stride of each used level in input pixels.
        anchor_generator: anchors per level; defaults to RetinaNet's 9 anchors on ``strides``.
        box_coder: delta parametrisation; defaults to weights ``(1, 1, 1, 1)``.
        iou_thresholds: ``(low, high)`` of :func:`match_anchors`.
        allow_low_quality_matches: see :func:`match_anchors`.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        smooth_l1_beta: transition point of the smooth-L1 box loss (0 gives L1).
        box_loss: ``"smooth_l1"`` on deltas, or ``"giou"`` on decoded boxes.
        score_thresh: minimum classification probability of a candidate.
        topk_candidates: candidates kept per level before NMS.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_image: detections kept after NMS.
        input_downsample: 2 for a low-resolution RetinaNet (see :class:`DenseDetector`).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        anchor_generator: AnchorGenerator | None = None,
        box_coder: BoxCoder | None = None,
        iou_thresholds: tuple[float, float] = (0.4, 0.5),
        allow_low_quality_matches: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        smooth_l1_beta: float = 0.1,
        box_loss: str = "smooth_l1",
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        input_downsample: int = 1,
    ) -> None:
        super().__init__(
            backbone=backbone,
            head=head,
            in_features=in_features,
            strides=strides,
            num_classes=num_classes,
            input_downsample=input_downsample,
        )
        if anchor_generator is None:
            anchor_generator = AnchorGenerator(strides=self.strides)
        if anchor_generator.strides != self.strides:
            raise ValueError(
                f"RetinaNet: anchor_generator strides {anchor_generator.strides} differ from strides {self.strides}"
            )
        head_anchors = getattr(head, "num_anchors", anchor_generator.num_anchors_per_location)
        if head_anchors != anchor_generator.num_anchors_per_location:
            raise ValueError(
                f"RetinaNet: head predicts {head_anchors} anchors per location but the anchor generator "
                f"makes {anchor_generator.num_anchors_per_location}"
            )
        if getattr(head, "num_classes", num_classes) != num_classes:
            raise ValueError(f"RetinaNet: head has {head.num_classes} classes, detector {num_classes}")
        low, high = iou_thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"RetinaNet: iou_thresholds must satisfy 0 <= low <= high <= 1, got {iou_thresholds}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"RetinaNet: box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.iou_thresholds = (float(low), float(high))
        self.allow_low_quality_matches = allow_low_quality_matches
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss = box_loss
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    # Anchors and assignment ------------------------------------------------------------------

    @staticmethod
    def feature_shapes(predictions: dict[str, list[Tensor]]) -> list[tuple[int, int]]:
        """``(Hi, Wi)`` of every level of ``predictions``."""
        return [(int(x.shape[-2]), int(x.shape[-1])) for x in predictions["cls_logits"]]

    def anchors(self, feature_shapes: Sequence[tuple[int, int]], strides: Sequence[int] | None = None) -> list[Tensor]:
        """Per level float32 ``(Hi*Wi*A, 4)`` anchors; ``strides`` overrides the level strides."""
        return self.anchor_generator(feature_shapes, strides or self.strides)

    def match(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``(R,)`` matched box index, -1 or -2 of ``anchors (R, 4)`` against ``boxes (M, 4)``."""
        iou = box_iou(boxes.float().to(anchors.device), anchors.float())
        return match_anchors(
            iou, thresholds=self.iou_thresholds, allow_low_quality_matches=self.allow_low_quality_matches
        )

    @torch.no_grad()
    def assign(self, anchors: Tensor, targets: list[dict[str, Tensor]]) -> AnchorAssignment:
        """Match the anchors of every image to its ground truth.

        Args:
            anchors: ``(R, 4)`` anchors of all levels concatenated (the order of
                :meth:`flatten_predictions`).
            targets: per image ``{"boxes": (M, 4), "labels": (M,)}``; ``M`` may be 0, which makes
                every anchor background.

        Returns:
            An :class:`AnchorAssignment` with ``(N, R)`` and ``(N, R, 4)`` tensors.
        """
        anchors = anchors.float()
        matched_all, labels_all, boxes_all = [], [], []
        for boxes, labels in _checked_targets(targets, self.num_classes):
            boxes, labels = boxes.to(anchors.device), labels.to(anchors.device)
            matched = self.match(anchors, boxes)
            fg = matched >= 0
            safe_idx = matched.clamp(min=0)
            anchor_labels = torch.full_like(matched, self.num_classes)
            anchor_labels[matched == IGNORE] = -1
            matched_boxes = torch.zeros_like(anchors)
            if boxes.shape[0] > 0:
                anchor_labels[fg] = labels[safe_idx[fg]]
                matched_boxes[fg] = boxes[safe_idx[fg]]
            matched_all.append(matched)
            labels_all.append(anchor_labels)
            boxes_all.append(matched_boxes)
        return AnchorAssignment(torch.stack(matched_all), torch.stack(labels_all), torch.stack(boxes_all))

    @torch.no_grad()
    def assign_boxes(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """``(R,)`` bool: anchors that the assignment rule makes foreground for ``boxes (M, 4)``.

        GID uses this to turn its general-instance boxes into an anchor mask (docs/methods.md §3.4).
        """
        if boxes.numel() == 0:
            return torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        return self.match(anchors, boxes.reshape(-1, 4)) >= 0

    # Losses ----------------------------------------------------------------------------------

    def flatten_predictions(self, predictions: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor]:
        """Concatenate levels: ``(N, R, K)`` logits and ``(N, R, 4)`` deltas, ``R = sum Hi*Wi*A``."""
        logits = torch.cat([permute_to_nhwk(x, self.num_classes) for x in predictions["cls_logits"]], dim=1)
        deltas = torch.cat([permute_to_nhwk(x, 4) for x in predictions["bbox_deltas"]], dim=1)
        return logits, deltas

    def normalizer(self, num_fg: Tensor) -> Tensor:
        """Divisor of both losses: ``max(1, num_fg)`` as a float32 scalar.

        Override to average ``num_fg`` over processes under DDP.
        """
        return num_fg.float().clamp(min=1.0)

    def losses(
        self,
        predictions: dict[str, list[Tensor]],
        targets: list[dict[str, Tensor]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """Focal classification loss and box loss of one branch, both in float32.

        Args:
            predictions: ``{"cls_logits": [(N, A*K, Hi, Wi)], "bbox_deltas": [(N, A*4, Hi, Wi)]}``.
            targets: per image ``{"boxes": (M, 4), "labels": (M,)}`` in input pixels.
            image_shape: padded ``(H, W)`` of the batch; anchors do not depend on it.
            strides: per level strides overriding the configured ones (MSAD low-res branch).

        Returns:
            ``{"loss_cls", "loss_box_reg"}``: the focal loss summed over non-ignored anchors and
            classes, and the box loss summed over foreground anchors, each divided by
            :meth:`normalizer` of the foreground count.
        """
        if len(targets) != predictions["cls_logits"][0].shape[0]:
            raise InputError(
                f"got {len(targets)} targets for a batch of {predictions['cls_logits'][0].shape[0]} images"
            )
        logits, deltas = self.flatten_predictions(predictions)
        anchors = torch.cat(self.anchors(self.feature_shapes(predictions), strides))
        assignment = self.assign(anchors, targets)
        fg, valid = assignment.fg_mask, assignment.valid_mask
        normalizer = self.normalizer(fg.sum())

        valid_logits = logits[valid].float()
        valid_labels = assignment.labels[valid]
        # Background anchors (label K) keep an all-zero target row.
        cls_targets = torch.zeros_like(valid_logits)
        fg_rows = (valid_labels < self.num_classes).nonzero().flatten()
        cls_targets[fg_rows, valid_labels[fg_rows]] = 1.0
        loss_cls = sigmoid_focal_loss(
            valid_logits, cls_targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )

        fg_anchors = anchors.unsqueeze(0).expand_as(assignment.matched_boxes)[fg]
        fg_deltas = deltas[fg].float()
        fg_boxes = assignment.matched_boxes[fg]
        if self.box_loss == "giou":
            predicted = self.box_coder.decode(fg_deltas, fg_anchors)
            loss_box = generalized_box_iou_loss(predicted, fg_boxes, reduction="sum")
        else:
            target_deltas = self.box_coder.encode(fg_boxes, fg_anchors)
            loss_box = F.smooth_l1_loss(fg_deltas, target_deltas, beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box / normalizer}

    # Inference -------------------------------------------------------------------------------

    @torch.no_grad()
    def postprocess(
        self,
        predictions: dict[str, list[Tensor]],
        image_sizes: list[tuple[int, int]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image.

        Each level keeps the ``topk_candidates`` best (anchor, class) pairs with probability above
        ``score_thresh``; their boxes are decoded, clipped to the image's valid size, boxes left
        empty by clipping are dropped, and class-wise NMS keeps the ``detections_per_image`` best.

        Args:
            predictions: raw head outputs, as in :meth:`losses`.
            image_sizes: valid ``(h, w)`` of every image.
            image_shape: padded ``(H, W)`` of the batch (unused: clipping uses ``image_sizes``).
            strides: per level strides overriding the configured ones.

        Returns:
            Per image ``{"boxes": (D, 4) float32, "scores": (D,) float32, "labels": (D,) int64}``,
            sorted by decreasing score.
        """
        num_images = predictions["cls_logits"][0].shape[0]
        if len(image_sizes) != num_images:
            raise InputError(f"got {len(image_sizes)} image_sizes for a batch of {num_images} images")
        anchors = self.anchors(self.feature_shapes(predictions), strides)
        per_level = [
            (
                level_anchors,
                permute_to_nhwk(cls, self.num_classes).float().sigmoid(),
                permute_to_nhwk(reg, 4).float(),
            )
            for level_anchors, cls, reg in zip(anchors, predictions["cls_logits"], predictions["bbox_deltas"])
        ]
        results = []
        for i in range(num_images):
            boxes_all, scores_all, labels_all = [], [], []
            for level_anchors, probs, deltas in per_level:
                scores = probs[i].flatten()
                candidate_idx = (scores > self.score_thresh).nonzero().flatten()
                scores = scores[candidate_idx]
                if scores.numel() > self.topk_candidates:
                    scores, keep = scores.topk(self.topk_candidates)
                    candidate_idx = candidate_idx[keep]
                anchor_idx = candidate_idx // self.num_classes
                boxes_all.append(self.box_coder.decode(deltas[i][anchor_idx], level_anchors[anchor_idx]))
                scores_all.append(scores)
                labels_all.append(candidate_idx % self.num_classes)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            height, width = image_sizes[i]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[non_empty], scores[non_empty], labels[non_empty]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_image]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
