"""RetinaNet: anchor assignment, focal / box losses and post-processing (docs/methods.md §2.3, §3.4).

Assignment follows detectron2's RetinaNet: an anchor whose best IoU with a ground-truth box is
below 0.4 is background, at least 0.5 is foreground, in between is ignored; with
``allow_low_quality_matches`` every ground-truth box also claims the anchors of highest IoU with
it (ties included), so no box is left without a foreground anchor. The assignment is public
because distillers need it: ADL excludes the ignored anchors, GID assigns its instance boxes to
anchors with the same rule (:meth:`RetinaNet.assign_boxes`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from msadkit.modeling.detectors.anchor_matching import (
    BACKGROUND,
    IGNORE,
    AnchorAssignment,
    checked_targets,
    match_anchors,
)
from msadkit.modeling.detectors.anchors import AnchorGenerator
from msadkit.modeling.detectors.box_coder import BoxCoder
from msadkit.modeling.detectors.dense_detector import DenseDetector, permute_to_nhwk
from msadkit.modeling.detectors.postprocess import top_candidates
from msadkit.modeling.outputs import DenseOutputs

__all__ = ["RetinaNet", "AnchorAssignment", "match_anchors", "BACKGROUND", "IGNORE", "BOX_LOSSES"]

BOX_LOSSES = ("smooth_l1", "giou")


class RetinaNet(DenseDetector):
    """RetinaNet with sigmoid focal loss and smooth-L1 (or GIoU) box loss.

    Args:
        anchor_generator: anchors per level; defaults to RetinaNet's 9 anchors on ``strides``.
        box_coder: delta parametrisation; defaults to weights ``(1, 1, 1, 1)``.
        iou_thresholds: ``(low, high)`` of :func:`match_anchors`.
        allow_low_quality_matches: see :func:`match_anchors`.
        smooth_l1_beta: transition point of the smooth-L1 box loss (0 gives L1).
        box_loss: ``"smooth_l1"`` on deltas, or ``"giou"`` on decoded boxes.
        common: the arguments of :class:`DenseDetector` (``nms_thresh`` defaults to 0.5 here);
            ``head`` is a :class:`~msadkit.modeling.heads.retinanet_head.RetinaNetHead` (or any head
            with the same outputs ``{"cls_logits", "bbox_deltas"}``).
    """

    def __init__(
        self,
        *,
        anchor_generator: AnchorGenerator | None = None,
        box_coder: BoxCoder | None = None,
        iou_thresholds: tuple[float, float] = (0.4, 0.5),
        allow_low_quality_matches: bool = True,
        smooth_l1_beta: float = 0.1,
        box_loss: str = "smooth_l1",
        **common: Any,
    ) -> None:
        common.setdefault("nms_thresh", 0.5)
        super().__init__(**common)
        if anchor_generator is None:
            anchor_generator = AnchorGenerator(strides=self.strides)
        if anchor_generator.strides != self.strides:
            raise ValueError(
                f"RetinaNet: anchor_generator strides {anchor_generator.strides} differ from strides {self.strides}"
            )
        head_anchors = getattr(self.head, "num_anchors", anchor_generator.num_anchors_per_location)
        if head_anchors != anchor_generator.num_anchors_per_location:
            raise ValueError(
                f"RetinaNet: head predicts {head_anchors} anchors per location but the anchor generator "
                f"makes {anchor_generator.num_anchors_per_location}"
            )
        if getattr(self.head, "num_classes", self.num_classes) != self.num_classes:
            raise ValueError(f"RetinaNet: head has {self.head.num_classes} classes, detector {self.num_classes}")
        low, high = iou_thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"RetinaNet: iou_thresholds must satisfy 0 <= low <= high <= 1, got {iou_thresholds}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"RetinaNet: box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.iou_thresholds = (float(low), float(high))
        self.allow_low_quality_matches = allow_low_quality_matches
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss = box_loss

    # Anchors and assignment ------------------------------------------------------------------

    @staticmethod
    def feature_shapes(predictions: dict[str, list[Tensor]]) -> list[tuple[int, int]]:
        """``(Hi, Wi)`` of every level of ``predictions``."""
        # Not int(): traced for export, the sizes stay symbolic.
        return [(x.shape[-2], x.shape[-1]) for x in predictions["cls_logits"]]

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
        for boxes, labels in checked_targets(targets, self.num_classes):
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

    # What distillation asks of a detector ------------------------------------------------------

    def decode_dense(self, predictions: dict[str, list[Tensor]], *, with_quality: bool = False) -> DenseOutputs:
        """See :meth:`DenseDetector.decode_dense`; boxes are the anchors decoded by the box coder
        (RetinaNet has no quality estimate, so ``with_quality`` changes nothing)."""
        del with_quality
        cls_logits, deltas = self.flatten_predictions(predictions)
        anchors = torch.cat(self.anchors(self.feature_shapes(predictions))).to(deltas.device)
        boxes = self.box_coder.decode(deltas.detach(), anchors.unsqueeze(0))
        return DenseOutputs(cls_logits, deltas, boxes, cls_logits.detach().float().sigmoid())

    @torch.no_grad()
    def assignment_mask(self, predictions: dict[str, list[Tensor]], boxes: list[Tensor]) -> Tensor:
        """See :meth:`DenseDetector.assignment_mask`: the anchors :meth:`assign_boxes` makes foreground."""
        anchors = torch.cat(self.anchors(self.feature_shapes(predictions)))
        return torch.stack([self.assign_boxes(anchors, b.to(anchors.device)) for b in boxes])

    def classification_valid_mask(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]]
    ) -> Tensor:
        """Every anchor that the assignment to ``targets`` does not ignore (best IoU in [0.4, 0.5))."""
        anchors = torch.cat(self.anchors(self.feature_shapes(predictions)))
        return self.assign(anchors, targets).valid_mask

    def layout_mismatch(self, other: DenseDetector) -> str | None:
        """See :meth:`DenseDetector.layout_mismatch`; RetinaNets must also share their anchors."""
        why = super().layout_mismatch(other)
        if why is None:
            assert isinstance(other, RetinaNet)
            mine, theirs = self._probe_anchors(), other._probe_anchors()
            if mine.shape != theirs.shape or not torch.equal(mine, theirs):
                why = (
                    "their anchors differ (model.retinanet.anchor_base_sizes / aspect_ratios): the student has "
                    f"{self.anchor_generator.num_anchors_per_location} anchors per location, the teacher "
                    f"{other.anchor_generator.num_anchors_per_location}"
                )
        return why

    def _probe_anchors(self) -> Tensor:
        """Anchors of a tiny 2x3 grid on every level: equal tensors mean equal anchor layouts."""
        return torch.cat([a.cpu() for a in self.anchors([(2, 3)] * len(self.strides))])

    def normalizer(self, num_fg: Tensor) -> Tensor:
        """Divisor of both losses: ``max(1, num_fg)`` as a float32 scalar.

        Override to average ``num_fg`` over processes under DDP.
        """
        return num_fg.float().clamp(min=1.0)

    def loss_assignment(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]], strides: Sequence[int] | None
    ) -> tuple[Tensor, AnchorAssignment]:
        """The ``(R, 4)`` anchors of all levels (``strides`` overriding the configured ones) and their
        :meth:`assign` to ``targets``."""
        anchors = torch.cat(self.anchors(self.feature_shapes(predictions), strides))
        return anchors, self.assign(anchors, targets)

    def assigned_losses(
        self, predictions: dict[str, list[Tensor]], assigned: tuple[Tensor, AnchorAssignment]
    ) -> dict[str, Tensor]:
        """Focal classification loss and box loss of one branch, both in float32.

        Args:
            predictions: ``{"cls_logits": [(N, A*K, Hi, Wi)], "bbox_deltas": [(N, A*4, Hi, Wi)]}``.
            assigned: anchors and assignment of :meth:`loss_assignment`.

        Returns:
            ``{"loss_cls", "loss_box_reg"}``: the focal loss summed over non-ignored anchors and
            classes, and the box loss summed over foreground anchors, each divided by
            :meth:`normalizer` of the foreground count.
        """
        anchors, assignment = assigned
        logits, deltas = self.flatten_predictions(predictions)
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

    def level_outputs(
        self, predictions: dict[str, list[Tensor]], strides: Sequence[int] | None
    ) -> list[tuple[Tensor, ...]]:
        """Per level ``(anchors (Hi*Wi*A, 4), class probabilities (N, Hi*Wi*A, K), deltas (N, Hi*Wi*A, 4))``,
        float32."""
        anchors = self.anchors(self.feature_shapes(predictions), strides)
        return [
            (
                level_anchors,
                permute_to_nhwk(cls, self.num_classes).float().sigmoid(),
                permute_to_nhwk(reg, 4).float(),
            )
            for level_anchors, cls, reg in zip(anchors, predictions["cls_logits"], predictions["bbox_deltas"])
        ]

    def level_candidates(self, level: tuple[Tensor, ...], image: int) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`DenseDetector.level_candidates`: the ``topk_candidates`` best (anchor, class)
        probabilities above ``score_thresh``, their anchors decoded by the box coder."""
        level_anchors, probs, deltas = level
        scores = probs[image].flatten()
        candidate_idx = (scores > self.score_thresh).nonzero().flatten()
        scores = scores[candidate_idx]
        scores, keep = top_candidates(scores, self.topk_candidates)
        candidate_idx = candidate_idx[keep]
        anchor_idx = candidate_idx // self.num_classes
        boxes = self.box_coder.decode(deltas[image][anchor_idx], level_anchors[anchor_idx])
        return boxes, scores, candidate_idx % self.num_classes
