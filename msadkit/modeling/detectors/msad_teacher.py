"""The MSAD multi-scale teacher (docs/methods.md §1.1-§1.5), registered as ``model.arch: msad_teacher``.

One backbone with FPN runs on the high-resolution batch and on its nearest 0.5x copy. Shifting the
low-resolution pyramid by one level aligns the two: low ``p2..p6`` pairs with high ``p3..p7`` (same
stride in input pixels, same ``H x W`` when the batch is padded to a multiple of 256). One shared
C-FF module fuses every pair into ``F3..F7`` and one shared FCOS head predicts on all three
pyramids, each assigned with the high-resolution strides and ground truth::

    loss = FCOS(high) + FCOS(low) + fused_loss_weight * FCOS(fused)

Inference uses one branch, the fused one by default. As a distillation teacher it hands out the
fused maps, which a low-resolution student's ``p2..p6`` imitate level by level.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from msadkit.errors import ConfigError
from msadkit.modeling.detection_model import DetectionModel
from msadkit.modeling.detectors.dense_detector import downsample_nearest
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.fusion import CrossingFeatureFusion, fuse_pyramids
from msadkit.modeling.image_batch import check_image_batch
from msadkit.modeling.levels import LOW_RES_FEATURES
from msadkit.modeling.outputs import TeacherOutputs

__all__ = ["MSADTeacher", "EVAL_BRANCHES", "SIZE_DIVISIBILITY"]

EVAL_BRANCHES = ("fused", "high", "low")
# Padding to a multiple of 256 makes low-res P_l and high-res P_(l+1) equal in size at every level
# up to the high-res P7 (stride 128) (docs/methods.md §1.2).
SIZE_DIVISIBILITY = 256


class MSADTeacher(DetectionModel):
    """High- and low-resolution FCOS branches sharing every weight, fused by a shared C-FF.

    Args:
        detector: the FCOS whose backbone, FPN and head all branches share. Its backbone must return
            ``p2..p7``; its ``in_features`` are the high-resolution levels ``p3..p7`` and its strides
            (8..128) serve all three branches.
        fusion: the shared C-FF module (built for the FPN width).
        low_features: the low-resolution levels paired with ``detector.in_features``.
        fused_loss_weight: weight of the fused branch's FCOS loss.
        eval_branch: which branch inference uses: ``"fused"``, ``"high"`` or ``"low"``.

    Attributes:
        high_features / low_features: the paired level names, finest first.
    """

    def __init__(
        self,
        *,
        detector: FCOS,
        fusion: CrossingFeatureFusion,
        low_features: Sequence[str] = LOW_RES_FEATURES,
        fused_loss_weight: float = 0.4,
        eval_branch: str = "fused",
    ) -> None:
        super().__init__()
        if detector.input_downsample != 1:
            raise ValueError("MSADTeacher: the shared detector must see the high-resolution input (input_downsample=1)")
        if len(low_features) != len(detector.in_features):
            raise ValueError(
                f"MSADTeacher: low_features {tuple(low_features)} must pair one to one with the "
                f"detector's in_features {detector.in_features}"
            )
        produced = set(getattr(detector.backbone, "out_features", ()))
        absent = [name for name in (*detector.in_features, *low_features) if name not in produced]
        if absent:
            raise ValueError(f"MSADTeacher: the backbone does not return {absent}; it returns {sorted(produced)}")
        if eval_branch not in EVAL_BRANCHES:
            raise ValueError(f"MSADTeacher: eval_branch must be one of {EVAL_BRANCHES}, got {eval_branch!r}")
        self.detector = detector
        self.fusion = fusion
        self.high_features = tuple(detector.in_features)
        self.low_features = tuple(low_features)
        self.fused_loss_weight = float(fused_loss_weight)
        self.eval_branch = eval_branch

    # A property, not a second registration: the backbone appears once in ``state_dict()``.
    @property
    def backbone(self) -> nn.Module:
        """The shared backbone with FPN (``model_flops`` reads ``backbone.bottom_up``)."""
        return self.detector.backbone

    @property
    def dense_detector(self) -> FCOS:
        """The shared FCOS that makes every branch's predictions (what response-based terms compare)."""
        return self.detector

    @property
    def head(self) -> nn.Module:
        """The shared FCOS head."""
        return self.detector.head

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of all three branches in high-resolution pixels, ``(8, ..., 128)``."""
        return self.detector.strides

    def check_batch(self, images: Tensor) -> None:
        """Raise unless ``images`` is a finite ``(N, 3, H, W)`` batch with H, W multiples of 256."""
        check_image_batch(images, "MSADTeacher", require_finite=True)
        height, width = images.shape[-2:]
        if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
            raise ConfigError(
                f"the MSAD teacher needs a batch padded to a multiple of {SIZE_DIVISIBILITY} so that its "
                f"high- and low-resolution pyramids align, got {height}x{width}; set "
                f"data.size_divisibility={SIZE_DIVISIBILITY}"
            )

    def high_levels(self, images: Tensor) -> list[Tensor]:
        """High-resolution ``p3..p7`` of the batch, each ``(N, C, H/s, W/s)`` for s = 8..128."""
        features = self.backbone(images)
        return [features[name] for name in self.high_features]

    def low_levels(self, images: Tensor) -> list[Tensor]:
        """Low-resolution ``p2..p6`` of the 0.5x copy; level i has the shape of ``high_levels[i]``."""
        features = self.backbone(downsample_nearest(images))
        return [features[name] for name in self.low_features]

    def fuse(self, high: list[Tensor], low: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """C-FF of every aligned pair: fused ``F3..F7`` and the ``(N, L, 2)`` weights (high, low)."""
        fused, weights = fuse_pyramids(self.fusion, high, low, return_weights=True)
        return fused, weights

    def pyramids(self, images: Tensor) -> dict[str, Any]:
        """All three pyramids of a checked batch: ``{"high", "low", "fused": [...], "weights": (N, L, 2)}``."""
        high = self.high_levels(images)
        low = self.low_levels(images)
        fused, weights = self.fuse(high, low)
        return {"high": high, "low": low, "fused": fused, "weights": weights}

    def losses(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The teacher's training losses, prefixed ``high_``, ``low_`` and ``fused_``.

        The fused terms are already multiplied by ``fused_loss_weight``, so the values sum to the
        total loss.

        Args:
            images: ``(N, 3, H, W)`` high-resolution batch, H and W multiples of 256.
            targets: per image ``{"boxes": (M, 4) xyxy in high-res pixels, "labels": (M,)}``.
        """
        pyramids = self.pyramids(images)
        predictions = {branch: self.detector.predict(pyramids[branch]) for branch in ("high", "low", "fused")}
        # The three branches have identical level shapes and strides, so one assignment serves all.
        assigned = self.detector.assign(predictions["high"], targets)
        losses: dict[str, Tensor] = {}
        for branch, weight in (("high", 1.0), ("low", 1.0), ("fused", self.fused_loss_weight)):
            terms = self.detector.assigned_losses(predictions[branch], assigned)
            for key, value in terms.items():
                losses[f"{branch}_{key}"] = value * weight
        return losses

    def branch_levels(self, images: Tensor, branch: str) -> list[Tensor]:
        """The levels the head runs on for one branch, computing only what that branch needs."""
        if branch == "high":
            return self.high_levels(images)
        if branch == "low":
            return self.low_levels(images)
        if branch == "fused":
            return self.fuse(self.high_levels(images), self.low_levels(images))[0]
        raise ValueError(f"branch must be one of {EVAL_BRANCHES}, got {branch!r}")

    def training_losses(
        self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """:meth:`losses` of a checked batch (``forward`` in training mode)."""
        return self.losses(images, targets)

    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections of ``eval_branch`` on a checked batch, in high-resolution pixels (``forward`` in
        eval mode): per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}``."""
        predictions = self.detector.predict(self.branch_levels(images, self.eval_branch))
        return self.detector.postprocess(predictions, image_sizes, (images.shape[-2], images.shape[-1]))

    def distillation_outputs(
        self, images: Tensor, image_sizes: list[tuple[int, int]], *, need_predictions: bool = False
    ) -> TeacherOutputs:
        """This teacher as seen by distillation losses.

        Returns:
            ``TeacherOutputs`` with ``levels`` the fused ``F3..F7`` (each the shape of the student's
            low-res ``p2..p6``), ``predictions`` the shared head on them when asked, ``model`` the
            shared FCOS (for decoding) and ``extras`` ``{"fusion_weights": (N, 5, 2),
            "high_levels": [...], "low_levels": [...]}``.
        """
        self.check_batch(images)
        pyramids = self.pyramids(images)
        predictions = self.detector.predict(pyramids["fused"]) if need_predictions else None
        return TeacherOutputs(
            levels=pyramids["fused"],
            predictions=predictions,
            model=self.detector,
            extras={
                "fusion_weights": pyramids["weights"],
                "high_levels": pyramids["high"],
                "low_levels": pyramids["low"],
            },
        )

    @torch.no_grad()
    def branch_features(self, images: Tensor) -> dict[str, Any]:
        """The three pyramids without gradient, for feature-alignment analysis.

        Returns:
            ``{"high": [p3..p7], "low": [p2..p6], "fused": [F3..F7]}`` (level i of each has the same
            ``(N, C, Hi, Wi)`` shape) and ``"weights"``: ``(N, 5, 2)`` C-FF weights (high, low).
        """
        self.check_batch(images)
        return self.pyramids(images)

    def bottom_up_inputs(self, images: Tensor) -> list[Tensor]:
        """The inputs of every bottom-up pass inference makes: ``[HR, LR]`` for the fused branch.

        ``msadkit flops`` sums the backbone cost over them, so the fused teacher's backbone FLOPs
        are those of the high- plus the low-resolution pass (MSAD's "capacity").
        """
        if self.eval_branch == "high":
            return [images]
        if self.eval_branch == "low":
            return [downsample_nearest(images)]
        return [images, downsample_nearest(images)]

    def flops_forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """The tensor work of inference (no input checks, no post-processing) for FLOP counting."""
        predictions = self.detector.predict(self.branch_levels(images, self.eval_branch))
        return tuple(t for outputs in predictions.values() for t in outputs)
