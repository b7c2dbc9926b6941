"""Base class of the one-stage detectors (FCOS, RetinaNet).

The split follows detectron2's ``DenseDetector``: the head only predicts; target assignment, losses
and post-processing are methods of the detector that take the raw per-level predictions. A
distiller calls :meth:`DenseDetector.extract_features`, :meth:`DenseDetector.predict` and
:meth:`DenseDetector.losses` itself and so sees features and predictions of both models.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from msadkit.errors import InputError
from msadkit.modeling.detectors.postprocess import select_detections
from msadkit.modeling.image_batch import check_image_batch
from msadkit.modeling.outputs import DenseOutputs, TeacherOutputs

__all__ = ["DenseDetector", "downsample_nearest", "permute_to_nhwk"]


def downsample_nearest(images: Tensor, factor: int = 2) -> Tensor:
    """The low-resolution copy of a padded batch: plain nearest subsampling, no anti-aliasing.

    ``(N, C, H, W)`` -> ``(N, C, H // factor, W // factor)``, as ``F.interpolate(scale_factor=0.5,
    mode="nearest")`` does in the MSAD code (docs/methods.md §1.2).
    """
    return F.interpolate(images, scale_factor=1.0 / factor, mode="nearest")


def permute_to_nhwk(tensor: Tensor, k: int) -> Tensor:
    """Reshape a head output ``(N, A*K, H, W)`` to ``(N, H*W*A, K)``."""
    n, _, h, w = tensor.shape
    return tensor.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


class DenseDetector(nn.Module):
    """A backbone with FPN, a dense head and the glue between them.

    Subclasses implement :meth:`losses` and :meth:`postprocess`.

    Args:
        backbone: module mapping images ``(N, 3, H, W)`` to a dict of FPN maps (``"p2".."p7"``).
        head: module mapping a list of per-level maps to a dict of per-level raw predictions.
        in_features: names of the FPN levels the head runs on, finest first.
        strides: stride of each level in ``in_features`` in input pixels. A low-resolution MSAD
            branch runs on ``p2..p6`` of a half-size image with the high-resolution strides
            ``(8, ..., 128)``.
        num_classes: number of foreground classes.
        input_downsample: 1 for the image as given; 2 for a low-resolution detector that sees the
            nearest-neighbour 0.5x copy of the (padded) batch, as MSAD's low-res branch, student and
            low-res baseline do. Ground truth, strides and detections stay in input pixels.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        score_thresh: minimum classification probability of a candidate.
        topk_candidates: candidates kept per level before NMS.
        nms_thresh: IoU threshold of the class-wise NMS.
        detections_per_image: detections kept after NMS.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        in_features: Sequence[str],
        strides: Sequence[int],
        num_classes: int,
        input_downsample: int = 1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        if input_downsample not in (1, 2):
            raise ValueError(f"input_downsample must be 1 or 2, got {input_downsample}")
        if len(in_features) != len(strides):
            raise ValueError(f"in_features {tuple(in_features)} and strides {tuple(strides)} differ in length")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.head = head
        self.in_features = tuple(in_features)
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = int(num_classes)
        self.input_downsample = int(input_downsample)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    def extract_features(self, images: Tensor) -> dict[str, Tensor]:
        """Run backbone and FPN: ``(N, 3, H, W)`` -> dict of ``(N, C, Hi, Wi)`` maps.

        A low-resolution detector (``input_downsample=2``) first takes the 0.5x nearest copy.
        """
        check_image_batch(images, type(self).__name__, require_finite=True)
        if self.input_downsample != 1:
            images = downsample_nearest(images, self.input_downsample)
        return self.backbone(images)

    def select_levels(self, features: dict[str, Tensor]) -> list[Tensor]:
        """The maps of ``in_features`` in order."""
        return [features[name] for name in self.in_features]

    def predict(self, levels: list[Tensor]) -> dict[str, list[Tensor]]:
        """Raw per-level head predictions for a list of ``(N, C, Hi, Wi)`` maps."""
        return self.head(levels)

    def distillation_outputs(
        self, images: Tensor, image_sizes: list[tuple[int, int]], *, need_predictions: bool = False
    ) -> TeacherOutputs:
        """This detector as a teacher: its ``in_features`` maps and, if asked, its raw predictions."""
        levels = self.select_levels(self.extract_features(images))
        predictions = self.predict(levels) if need_predictions else None
        return TeacherOutputs(levels=levels, predictions=predictions, model=self)

    # What distillation asks of a detector ------------------------------------------------------

    @property
    def dense_detector(self) -> "DenseDetector":
        """The detector whose head makes this model's predictions: itself (an MSAD teacher answers
        with its shared FCOS)."""
        return self

    @property
    def feature_channels(self) -> int:
        """Channels of the FPN maps the head runs on."""
        return int(self.backbone.out_channels)

    def flatten_predictions(self, predictions: dict[str, list[Tensor]]) -> tuple[Tensor, ...]:
        """All levels concatenated, ``(N, R, K)`` logits first."""
        raise NotImplementedError

    def decode_dense(self, predictions: dict[str, list[Tensor]], *, with_quality: bool = False) -> DenseOutputs:
        """Flattened logits, raw box outputs, decoded boxes and scores of every location/anchor.

        Args:
            predictions: raw per-level head outputs of this detector.
            with_quality: scores include the detector's own quality estimate where it has one
                (FCOS: ``sigmoid(cls) * sigmoid(centerness)``).
        """
        raise NotImplementedError

    def assignment_mask(self, predictions: dict[str, list[Tensor]], boxes: list[Tensor]) -> Tensor:
        """``(N, R)`` bool: the locations/anchors this detector's assignment gives to ``boxes``.

        Args:
            predictions: raw per-level outputs (for the grid shapes).
            boxes: per image ``(Mi, 4)`` boxes in input pixels.
        """
        raise NotImplementedError

    def classification_valid_mask(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]]
    ) -> Tensor:
        """``(N, R)`` bool: the locations/anchors that take part in the classification loss (all of them
        unless the detector ignores some)."""
        logits = predictions["cls_logits"]
        num_locations = sum(x.shape[-2] * x.shape[-1] for x in logits)
        return torch.ones(logits[0].shape[0], num_locations, dtype=torch.bool, device=logits[0].device)

    def layout_mismatch(self, other: "DenseDetector") -> str | None:
        """Why ``other`` does not predict on the same locations/anchors as this detector, or None."""
        if type(self) is not type(other):
            return f"the student is a {type(self).__name__} and the teacher a {type(other).__name__}"
        if self.strides != other.strides:
            return f"the student's strides are {self.strides} and the teacher's {other.strides}"
        if self.num_classes != other.num_classes:
            return f"the student has {self.num_classes} classes and the teacher {other.num_classes}"
        return None

    # Training and inference --------------------------------------------------------------------

    def detection_selector(self):
        """The post-processing function :meth:`select_detections` runs (a detector may offer another order)."""
        return select_detections

    def select_detections(
        self, boxes: list[Tensor], scores: list[Tensor], labels: list[Tensor], image_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One image's detections from its per-level candidates (``(Ri, 4)`` boxes, ``(Ri,)`` scores and
        labels): clipped to ``image_size``, empty boxes dropped, class-wise NMS, the best kept."""
        return self.detection_selector()(
            torch.cat(boxes),
            torch.cat(scores),
            torch.cat(labels),
            image_size,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
        )

    def losses(
        self,
        predictions: dict[str, list[Tensor]],
        targets: list[dict[str, Tensor]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def postprocess(
        self,
        predictions: dict[str, list[Tensor]],
        image_sizes: list[tuple[int, int]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode.

        Args:
            images: ``(N, 3, H, W)`` normalised, padded batch.
            image_sizes: valid ``(h, w)`` per image; defaults to the padded size.
            targets: per image ``{"boxes": (M, 4) xyxy, "labels": (M,)}``.
        """
        features = self.extract_features(images)
        predictions = self.predict(self.select_levels(features))
        image_shape = (images.shape[-2], images.shape[-1])
        if self.training:
            if targets is None:
                raise InputError("targets are required in training mode")
            if len(targets) != images.shape[0]:
                raise InputError(f"got {len(targets)} targets for a batch of {images.shape[0]} images")
            return self.losses(predictions, targets, image_shape)
        if image_sizes is None:
            image_sizes = [image_shape] * images.shape[0]
        return self.postprocess(predictions, image_sizes, image_shape)
