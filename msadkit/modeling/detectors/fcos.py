"""FCOS detector (docs/methods.md §1.5): assignment, losses and post-processing around the head."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from msadkit.config.defaults import FCOS_CENTER_SAMPLING_RADIUS
from msadkit.modeling.detectors.dense_detector import DenseDetector, permute_to_nhwk
from msadkit.modeling.detectors.fcos_losses import fcos_losses
from msadkit.modeling.detectors.fcos_targets import (
    DEFAULT_SIZES_OF_INTEREST,
    FCOSTargets,
    assign_fcos_targets,
    compute_locations,
)
from msadkit.modeling.detectors.postprocess import select_detections, select_detections_nms_first, top_candidates
from msadkit.modeling.outputs import DenseOutputs

__all__ = ["FCOS", "decode_ltrb"]


def decode_ltrb(points: Tensor, distances: Tensor) -> Tensor:
    """Boxes from location centres and their distances to the four sides.

    Args:
        points: ``(..., 2)`` location centres ``(x, y)`` in input pixels.
        distances: ``(..., 4)`` distances ``(l, t, r, b)`` in input pixels.

    Returns:
        ``(..., 4)`` boxes ``(x1, y1, x2, y2)`` = ``(x - l, y - t, x + r, y + b)``.
    """
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


class FCOS(DenseDetector):
    """FCOS with centre sampling, stride-normalised regression and GIoU loss.

    Args:
        backbone: images -> dict of FPN maps.
        head: an :class:`~msadkit.modeling.heads.fcos_head.FCOSHead`.
        num_classes: K.
        in_features: FPN levels used, finest first.
        strides: stride of each used level in input pixels.
        sizes_of_interest: per level ``(lo, hi]`` range of the largest regression distance.
        center_sampling_radius: centre region radius in strides.
        giou_smoothing: added to intersection and union of the GIoU loss (1 in the MSAD code,
            ``model.fcos.giou_smoothing``).
        clip_before_nms: clip and drop empty boxes before NMS and keep the top detections by
            slicing (msadkit); False gives the MSAD code's order (``model.fcos.clip_before_nms``,
            :func:`~msadkit.modeling.detectors.postprocess.select_detections_nms_first`).
        input_downsample, focal_alpha, focal_gamma, score_thresh, topk_candidates, nms_thresh,
            detections_per_image: see :class:`DenseDetector`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        in_features: Sequence[str] = ("p3", "p4", "p5", "p6", "p7"),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        sizes_of_interest: Sequence[tuple[float, float]] = DEFAULT_SIZES_OF_INTEREST,
        center_sampling_radius: float = FCOS_CENTER_SAMPLING_RADIUS,
        giou_smoothing: float = 0.0,
        clip_before_nms: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(
            backbone=backbone, head=head, in_features=in_features, strides=strides, num_classes=num_classes, **common
        )
        self.sizes_of_interest = tuple(tuple(float(v) for v in rng) for rng in sizes_of_interest)
        self.center_sampling_radius = center_sampling_radius
        self.giou_smoothing = float(giou_smoothing)
        self.clip_before_nms = bool(clip_before_nms)

    def detection_selector(self):
        """Clip, then NMS (msadkit); ``clip_before_nms=False`` runs the MSAD order (NMS on unclipped boxes)."""
        return select_detections if self.clip_before_nms else select_detections_nms_first

    def flatten_predictions(self, predictions: dict[str, list[Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate levels: ``(N, R, K)`` logits, ``(N, R, 4)`` regression, ``(N, R)`` centerness."""
        cls = torch.cat([permute_to_nhwk(x, self.num_classes) for x in predictions["cls_logits"]], dim=1)
        reg = torch.cat([permute_to_nhwk(x, 4) for x in predictions["bbox_reg"]], dim=1)
        ctr = torch.cat([permute_to_nhwk(x, 1) for x in predictions["centerness"]], dim=1).squeeze(-1)
        return cls, reg, ctr

    def decode_dense(self, predictions: dict[str, list[Tensor]], *, with_quality: bool = False) -> DenseOutputs:
        """See :meth:`DenseDetector.decode_dense`; boxes are ``location -+ ltrb * stride``."""
        cls_logits, ltrb, centerness = self.flatten_predictions(predictions)
        locations = self.locations(predictions)
        points = torch.cat(locations)
        strides = torch.cat(
            [torch.full((len(loc), 1), float(s), device=points.device) for loc, s in zip(locations, self.strides)]
        )
        boxes = decode_ltrb(points, ltrb.detach().float() * strides)
        scores = cls_logits.detach().float().sigmoid()
        if with_quality:
            scores = scores * centerness.detach().float().sigmoid().unsqueeze(-1)
        return DenseOutputs(cls_logits, ltrb, boxes, scores)

    @torch.no_grad()
    def assignment_mask(self, predictions: dict[str, list[Tensor]], boxes: list[Tensor]) -> Tensor:
        """See :meth:`DenseDetector.assignment_mask`: FCOS's centre region and size ranges."""
        targets = [
            {"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)} for b in boxes
        ]
        return self.assign(predictions, targets).labels < self.num_classes

    def locations(self, predictions: dict[str, list[Tensor]], strides: Sequence[int] | None = None) -> list[Tensor]:
        """Per level ``(Hi*Wi, 2)`` location centres for the shapes of ``predictions``."""
        shapes = [tuple(x.shape[-2:]) for x in predictions["cls_logits"]]
        device = predictions["cls_logits"][0].device
        return compute_locations(shapes, strides or self.strides, device=device)

    def assign(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]], strides: Sequence[int] | None = None
    ) -> FCOSTargets:
        """FCOS targets for the locations of ``predictions``."""
        strides = strides or self.strides
        return assign_fcos_targets(
            self.locations(predictions, strides),
            strides,
            targets,
            self.num_classes,
            sizes_of_interest=self.sizes_of_interest,
            center_sampling_radius=self.center_sampling_radius,
        )

    def losses(
        self,
        predictions: dict[str, list[Tensor]],
        targets: list[dict[str, Tensor]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """FCOS losses of one branch; ``strides`` overrides the level strides (MSAD low-res)."""
        cls, reg, ctr = self.flatten_predictions(predictions)
        fcos_targets = self.assign(predictions, targets, strides)
        return fcos_losses(
            cls,
            reg,
            ctr,
            fcos_targets,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            giou_smoothing=self.giou_smoothing,
        )

    @torch.no_grad()
    def postprocess(
        self,
        predictions: dict[str, list[Tensor]],
        image_sizes: list[tuple[int, int]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image: score ``sqrt(p_cls * p_ctr)``, class-wise NMS, top detections.

        Candidates need a classification probability above ``score_thresh``; each level keeps its
        ``topk_candidates`` best before boxes are decoded, clipped to the image's valid size and
        suppressed.
        """
        strides = strides or self.strides
        locations = self.locations(predictions, strides)
        num_images = predictions["cls_logits"][0].shape[0]
        per_level = []
        for level, (loc, stride) in enumerate(zip(locations, strides)):
            cls = permute_to_nhwk(predictions["cls_logits"][level], self.num_classes).float().sigmoid()
            reg = permute_to_nhwk(predictions["bbox_reg"][level], 4).float() * stride
            ctr = permute_to_nhwk(predictions["centerness"][level], 1).float().sigmoid()
            per_level.append((loc, cls, reg, ctr))

        results = []
        for i in range(num_images):
            boxes_all, scores_all, labels_all = [], [], []
            for loc, cls, reg, ctr in per_level:
                probs = cls[i]
                candidate = probs > self.score_thresh
                scores = (probs * ctr[i]).sqrt()[candidate]
                location_idx, labels = candidate.nonzero(as_tuple=True)
                scores, keep = top_candidates(scores, self.topk_candidates)
                location_idx, labels = location_idx[keep], labels[keep]
                boxes_all.append(decode_ltrb(loc[location_idx], reg[i][location_idx]))
                scores_all.append(scores)
                labels_all.append(labels)
            results.append(self.select_detections(boxes_all, scores_all, labels_all, image_sizes[i]))
        return results
