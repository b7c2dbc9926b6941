"""FCOS detector (docs/methods.md §1.5): assignment, losses and post-processing around the head."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

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
        sizes_of_interest: per level ``(lo, hi]`` range of the largest regression distance.
        center_sampling_radius: centre region radius in strides.
        giou_smoothing: added to intersection and union of the GIoU loss (1 in the MSAD code,
            ``model.fcos.giou_smoothing``).
        clip_before_nms: clip and drop empty boxes before NMS and keep the top detections by
            slicing (msadkit); False gives the MSAD code's order (``model.fcos.clip_before_nms``,
            :func:`~msadkit.modeling.detectors.postprocess.select_detections_nms_first`).
        common: the arguments of :class:`DenseDetector`; ``head`` is an
            :class:`~msadkit.modeling.heads.fcos_head.FCOSHead`.
    """

    def __init__(
        self,
        *,
        sizes_of_interest: Sequence[tuple[float, float]] = DEFAULT_SIZES_OF_INTEREST,
        center_sampling_radius: float = FCOS_CENTER_SAMPLING_RADIUS,
        giou_smoothing: float = 0.0,
        clip_before_nms: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
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

    def loss_assignment(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]], strides: Sequence[int] | None
    ) -> FCOSTargets:
        """:meth:`assign`: one assignment serves every branch whose levels have these shapes and strides."""
        return self.assign(predictions, targets, strides)

    def assigned_losses(self, predictions: dict[str, list[Tensor]], assigned: FCOSTargets) -> dict[str, Tensor]:
        """``{"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}`` of one branch's raw predictions
        against targets of :meth:`assign` (the MSAD teacher reuses one assignment for its three branches)."""
        cls, reg, ctr = self.flatten_predictions(predictions)
        return fcos_losses(
            cls,
            reg,
            ctr,
            assigned,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            giou_smoothing=self.giou_smoothing,
        )

    def level_outputs(
        self, predictions: dict[str, list[Tensor]], strides: Sequence[int] | None
    ) -> list[tuple[Tensor, ...]]:
        """Per level ``(locations (Hi*Wi, 2), class probabilities (N, Hi*Wi, K), ltrb distances in
        input pixels (N, Hi*Wi, 4), centerness probabilities (N, Hi*Wi, 1))``, float32."""
        strides = strides or self.strides
        per_level = []
        for level, (loc, stride) in enumerate(zip(self.locations(predictions, strides), strides)):
            cls = permute_to_nhwk(predictions["cls_logits"][level], self.num_classes).float().sigmoid()
            reg = permute_to_nhwk(predictions["bbox_reg"][level], 4).float() * stride
            ctr = permute_to_nhwk(predictions["centerness"][level], 1).float().sigmoid()
            per_level.append((loc, cls, reg, ctr))
        return per_level

    def level_candidates(self, level: tuple[Tensor, ...], image: int) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`DenseDetector.level_candidates`: candidates need a classification probability
        above ``score_thresh`` and rank by ``sqrt(p_cls * p_ctr)``, the score they keep; only the
        ``topk_candidates`` best are decoded."""
        loc, cls, reg, ctr = level
        probs = cls[image]
        candidate = probs > self.score_thresh
        scores = (probs * ctr[image]).sqrt()[candidate]
        location_idx, labels = candidate.nonzero(as_tuple=True)
        scores, keep = top_candidates(scores, self.topk_candidates)
        location_idx, labels = location_idx[keep], labels[keep]
        return decode_ltrb(loc[location_idx], reg[image][location_idx]), scores, labels
