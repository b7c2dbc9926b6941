"""Base class of the one-stage detectors (FCOS, RetinaNet).

The split follows detectron2's ``DenseDetector``: the head only predicts; target assignment, losses
and post-processing are methods of the detector that take the raw per-level predictions. A
distiller calls :meth:`DenseDetector.extract_features`, :meth:`DenseDetector.predict` and
:meth:`DenseDetector.losses` itself and so sees features and predictions of both models.

:meth:`DenseDetector.losses` and :meth:`DenseDetector.postprocess` are written once here; a
detector supplies the steps that differ: its assignment and loss terms, and per level how it
scores and decodes candidates.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from msadkit.modeling.detection_model import DetectionModel, check_batch_count
from msadkit.modeling.detectors.postprocess import select_detections
from msadkit.modeling.image_batch import check_image_batch
from msadkit.modeling.levels import HIGH_RES_FEATURES, HIGH_RES_STRIDES
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


class DenseDetector(DetectionModel):
    """A backbone with FPN, a dense head and the glue between them.

    Subclasses implement the assignment and loss hooks of :meth:`losses` (:meth:`loss_assignment`,
    :meth:`assigned_losses`) and the per-level hooks of :meth:`postprocess` (:meth:`level_outputs`,
    :meth:`level_candidates`).

    Args:
        backbone: module mapping images ``(N, 3, H, W)`` to a dict of FPN maps (``"p2".."p7"``).
        head: module mapping a list of per-level maps to a dict of per-level raw predictions.
        in_features: names of the FPN levels the head runs on, finest first (default ``p3..p7``).
        strides: stride of each level in ``in_features`` in input pixels (default ``8..128``). A
            low-resolution MSAD branch runs on ``p2..p6`` of a half-size image with the
            high-resolution strides ``(8, ..., 128)``.
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
        num_classes: int,
        in_features: Sequence[str] = HIGH_RES_FEATURES,
        strides: Sequence[int] = HIGH_RES_STRIDES,
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

    def check_batch(self, images: Tensor) -> None:
        """Raise :class:`~msadkit.errors.InputError` unless ``images`` is a finite float ``(N, 3, H, W)`` batch."""
        check_image_batch(images, type(self).__name__, require_finite=True)

    def extract_features(self, images: Tensor) -> dict[str, Tensor]:
        """Check the batch, then run backbone and FPN: ``(N, 3, H, W)`` -> dict of ``(N, C, Hi, Wi)`` maps."""
        self.check_batch(images)
        return self.checked_features(images)

    def checked_features(self, images: Tensor) -> dict[str, Tensor]:
        """Backbone and FPN on a batch that passed :meth:`check_batch` (``forward`` checks it first).

        A low-resolution detector (``input_downsample=2``) first takes the 0.5x nearest copy.
        """
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
        """The ground-truth losses of one branch, in float32.

        Args:
            predictions: raw per-level head outputs, ``"cls_logits"`` ``[(N, A*K, Hi, Wi)]`` and the
                detector's box outputs.
            targets: per image ``{"boxes": (M, 4), "labels": (M,)}`` in input pixels.
            image_shape: padded ``(H, W)`` of the batch; locations and anchors follow the level
                shapes, so no detector needs it.
            strides: per level strides overriding the configured ones (MSAD low-res branch).

        Returns:
            ``{loss name: scalar}`` of :meth:`assigned_losses`.
        """
        check_batch_count(len(targets), "targets", predictions["cls_logits"][0].shape[0])
        return self.assigned_losses(predictions, self.loss_assignment(predictions, targets, strides))

    def loss_assignment(
        self, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]], strides: Sequence[int] | None
    ) -> Any:
        """What :meth:`assigned_losses` needs of the ground truth: ``targets`` assigned to the
        locations/anchors of ``predictions`` (``strides`` None: the configured ones)."""
        raise NotImplementedError

    def assigned_losses(self, predictions: dict[str, list[Tensor]], assigned: Any) -> dict[str, Tensor]:
        """The loss terms of ``predictions`` against an assignment of :meth:`loss_assignment`."""
        raise NotImplementedError

    @torch.no_grad()
    def postprocess(
        self,
        predictions: dict[str, list[Tensor]],
        image_sizes: list[tuple[int, int]],
        image_shape: tuple[int, int],
        strides: Sequence[int] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image.

        Each level keeps the ``topk_candidates`` best (location/anchor, class) pairs with probability
        above ``score_thresh`` (:meth:`level_candidates`); their decoded boxes are clipped to the
        image's valid size, boxes left empty by clipping are dropped, and class-wise NMS keeps the
        ``detections_per_image`` best (:meth:`select_detections`).

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
        check_batch_count(len(image_sizes), "image_sizes", num_images)
        levels = self.level_outputs(predictions, strides)
        results = []
        for i in range(num_images):
            boxes, scores, labels = zip(*[self.level_candidates(level, i) for level in levels])
            results.append(self.select_detections(list(boxes), list(scores), list(labels), image_sizes[i]))
        return results

    def level_outputs(
        self, predictions: dict[str, list[Tensor]], strides: Sequence[int] | None
    ) -> list[tuple[Tensor, ...]]:
        """Per level, what :meth:`level_candidates` reads: the batch's float32 probabilities and box
        outputs, flattened per image, with the level's locations or anchors in input pixels."""
        raise NotImplementedError

    def level_candidates(self, level: tuple[Tensor, ...], image: int) -> tuple[Tensor, Tensor, Tensor]:
        """Image ``image``'s best candidates on one level of :meth:`level_outputs`: ``(C, 4)`` boxes in
        input pixels, ``(C,)`` scores and ``(C,)`` int64 labels, ``C <= topk_candidates``."""
        raise NotImplementedError

    def training_losses(
        self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """:meth:`losses` of the head's predictions on the checked batch."""
        predictions = self.predict(self.select_levels(self.checked_features(images)))
        return self.losses(predictions, targets, (images.shape[-2], images.shape[-1]))

    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """:meth:`postprocess` of the head's predictions on the checked batch."""
        predictions = self.predict(self.select_levels(self.checked_features(images)))
        return self.postprocess(predictions, image_sizes, (images.shape[-2], images.shape[-1]))
