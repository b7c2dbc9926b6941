"""CrossKD: cross-head knowledge distillation (Wang et al., CVPR 2024, arXiv 2306.11369).

Re-implemented from the official ``jbwang1997/CrossKD`` at 87e156a
(``mmdet/models/detectors/crosskd_retinanet.py``, ``crosskd_fcos.py`` and the configs
``configs/crosskd/crosskd_r50_retinanet_r101_fpn_2x_coco.py`` and
``crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py``). Per batch:

1. The student's head runs its towers on its levels up to conv ``k = reused_teacher_head_idx``
   (the output of conv ``k`` before its ReLU; ``k = 0``: the levels themselves); so does the
   frozen teacher's head on its paired levels, without gradient.
2. Each student map gets the teacher map's per-channel mean and standard deviation
   (``align_statistics``), then the teacher's head finishes its towers from conv ``k`` and makes the
   cross-head predictions. The teacher's weights are frozen, but gradients flow through them to
   the student's tower, FPN and backbone.
3. ``cls = cls_kd_weight * sum_valid KD-QFL(cross logits, teacher logits) / norm`` and
   ``reg = reg_kd_weight * sum_valid sigmoid(max_c teacher logit) * box_loss(cross box, teacher box) / norm``
   over every location/anchor the student's classification loss uses.

The official method is written per detector, with different recipes: RetinaNet (conv 3 of 4, GIoU
on boxes decoded from the anchors, weights 1 and 1, normalised by the number of positive anchors)
and FCOS (conv 2, ``-log IoU``, weights 0.4 and 0.75, normalised by the sum of the centerness targets
of the positive locations). This term therefore keeps a small table per detector class (defaults
and a differentiable box decoding: msadkit's detectors decode boxes for distillation only without
gradient, ``decode_dense``), and its centerness normaliser calls FCOS's own assignment.

The student's tower up to conv ``k`` runs a second time here (its normal forward is the
distiller's): the gradient is the same, the cost ``k`` convs per level and tower; a head with
BatchNorm would update its running statistics twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from msadkit.distill.adapters import make_feature_adapters
from msadkit.distill.crosskd_losses import BOX_LOSSES, align_statistics, aligned_box_loss, kd_quality_focal_loss
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.layout import check_same_layout, check_same_prediction_shape, dense_detector_of, fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.dense_detector import DenseDetector
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.fcos_targets import centerness_target
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from msadkit.utils.distributed import reduce_mean

__all__ = ["CrossKDLoss", "build_crosskd_term", "OPTIONS", "FCOS_DEFAULTS", "NORMALIZERS"]

# "positives": locations/anchors the student's assignment gives to the ground truth (official
# RetinaNet avg_factor); "centerness": the sum of their FCOS centerness targets, averaged over
# processes (official FCOS pos_centerness_denorm).
NORMALIZERS = ("positives", "centerness")

# Options of a ``type: crosskd`` entry and their defaults for a RetinaNet student: the official
# configs/crosskd/crosskd_r50_retinanet_r101_fpn_2x_coco.py (kd_cfg, lines 57-60).
OPTIONS: dict[str, Any] = {
    "reused_teacher_head_idx": 3,
    "cls_kd_weight": 1.0,
    "reg_kd_weight": 1.0,
    "reg_kd_loss": "giou",
    "kd_beta": 1.0,
    "normalizer": "positives",
    "align_statistics": True,
    "channel_adapter": False,
}
# What an FCOS student changes: configs/crosskd/crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py
# (kd_cfg, lines 55-58) and the normaliser of mmdet/models/detectors/crosskd_fcos.py (lines 232-233, 286-300).
FCOS_DEFAULTS: dict[str, Any] = {
    "reused_teacher_head_idx": 2,
    "cls_kd_weight": 0.4,
    "reg_kd_weight": 0.75,
    "reg_kd_loss": "iou",
    "normalizer": "centerness",
}


def _level_rows(model: DenseDetector, predictions: dict[str, list[Tensor]], value: Callable[[int], float]) -> Tensor:
    """``(R,)`` one value per flattened row, ``value(level)`` for the rows of each level."""
    logits = predictions["cls_logits"]
    rows = [x.shape[1] // model.num_classes * x.shape[2] * x.shape[3] for x in logits]
    return torch.cat([logits[0].new_full((count,), value(level)) for level, count in enumerate(rows)])


def _fcos_boxes(model: DenseDetector, predictions: dict[str, list[Tensor]], ltrb: Tensor) -> Tensor:
    """``(N, R, 4)`` boxes in pixels relative to each location: ``(-l, -t, r, b) * stride``."""
    strides = _level_rows(model, predictions, lambda level: float(model.strides[level])).to(ltrb.dtype)
    distances = ltrb * strides[None, :, None]
    return torch.cat([-distances[..., :2], distances[..., 2:]], dim=-1)


def _retinanet_boxes(model: DenseDetector, predictions: dict[str, list[Tensor]], deltas: Tensor) -> Tensor:
    """``(N, R, 4)`` boxes in pixels relative to each anchor's centre, decoded by the detector's box coder.

    Centring the anchors changes no IoU; it keeps the coordinates the size of the boxes, where
    the box coder's float32 does not cancel digits that far-off image positions would cost.
    """
    assert isinstance(model, RetinaNet)
    anchors = torch.cat(model.anchors(model.feature_shapes(predictions))).to(deltas.device)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    centred = anchors - centres.repeat(1, 2)
    return model.box_coder.decode(deltas, centred[None]).to(deltas.dtype)


@dataclass(frozen=True)
class _Family:
    defaults: dict[str, Any]
    boxes: Callable[[DenseDetector, dict[str, list[Tensor]], Tensor], Tensor]


_FAMILIES: dict[type, _Family] = {
    FCOS: _Family(defaults=FCOS_DEFAULTS, boxes=_fcos_boxes),
    RetinaNet: _Family(defaults={}, boxes=_retinanet_boxes),
}


class CrossKDLoss(DistillationLoss):
    """CrossKD between a student and a teacher of the same head layout: ``{"cls", "reg"}``.

    Args:
        name: prefix of the returned keys.
        weight: factor applied by the distiller on top of ``cls_kd_weight`` / ``reg_kd_weight``.
        reused_teacher_head_idx: tower conv ``k`` after which the student's maps enter the
            teacher's head, ``0 .. number of tower convs``.
        cls_kd_weight, reg_kd_weight: weights of the two losses.
        reg_kd_loss: ``"giou"`` or ``"iou"`` (see :func:`aligned_box_loss`).
        kd_beta: exponent of the KD-QFL weight.
        normalizer: one of :data:`NORMALIZERS`.
        align_statistics: give the student's maps the teacher's per-channel statistics first (the
            official code); False feeds them as they are.
        student_channels, teacher_channels: head widths; with ``channel_adapter`` two trainable 1x1
            convs (classification and box tower) map the student's maps to the teacher's width.
        channel_adapter: build those adapters (required when the widths differ).
        boxes: the student detector family's differentiable box decoding.
    """

    needs_teacher_predictions = True

    def __init__(
        self,
        *,
        name: str = "loss_crosskd",
        weight: float = 1.0,
        reused_teacher_head_idx: int = 3,
        cls_kd_weight: float = 1.0,
        reg_kd_weight: float = 1.0,
        reg_kd_loss: str = "giou",
        kd_beta: float = 1.0,
        normalizer: str = "positives",
        align_statistics: bool = True,
        student_channels: int,
        teacher_channels: int,
        channel_adapter: bool = False,
        boxes: Callable[[DenseDetector, dict[str, list[Tensor]], Tensor], Tensor],
    ) -> None:
        super().__init__(name=name, weight=weight)
        if reg_kd_loss not in BOX_LOSSES:
            raise ValueError(f"reg_kd_loss must be one of {BOX_LOSSES}, got {reg_kd_loss!r}")
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        for key, value in (("cls_kd_weight", cls_kd_weight), ("reg_kd_weight", reg_kd_weight), ("kd_beta", kd_beta)):
            if not value >= 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if student_channels != teacher_channels and not channel_adapter:
            raise ValueError(
                f"the student's head has {student_channels} channels and the teacher's {teacher_channels}; "
                "set channel_adapter: true to map them with trainable 1x1 convs"
            )
        self.reused_teacher_head_idx = int(reused_teacher_head_idx)
        self.cls_kd_weight, self.reg_kd_weight = float(cls_kd_weight), float(reg_kd_weight)
        self.reg_kd_loss = reg_kd_loss
        self.kd_beta = float(kd_beta)
        self.normalizer = normalizer
        self.align_statistics = bool(align_statistics)
        self._boxes = boxes
        # Index 0 maps the classification tower's maps, index 1 the box tower's.
        self.adapters: nn.ModuleList | None = None
        if channel_adapter:
            self.adapters = make_feature_adapters(student_channels, teacher_channels, num_levels=2)

    def cross_predictions(self, student: StudentOutputs, teacher: TeacherOutputs) -> dict[str, list[Tensor]]:
        """The teacher head's raw predictions on the student's tower maps (gradient to the student)."""
        k = self.reused_teacher_head_idx
        teacher_head = teacher.model.head
        with torch.no_grad():
            teacher_maps = teacher_head.tower_features(teacher.levels, k)
        cross = []
        for (cls_s, box_s), (cls_t, box_t) in zip(student.model.head.tower_features(student.levels, k), teacher_maps):
            if self.adapters is not None:
                cls_s, box_s = self.adapters[0](cls_s), self.adapters[1](box_s)
            if self.align_statistics:
                cls_s, box_s = align_statistics(cls_s, cls_t), align_statistics(box_s, box_t)
            cross.append((cls_s, box_s))
        return teacher_head.predict_from(cross, k)

    def _normalizer(self, student: StudentOutputs, targets: list[dict[str, Tensor]], dtype: torch.dtype) -> Tensor:
        model = student.model
        if self.normalizer == "centerness":
            assigned = model.assign(student.predictions, targets)
            positive = (assigned.labels >= 0) & (assigned.labels < model.num_classes)
            centerness = centerness_target(assigned.reg_targets[positive])
            return reduce_mean(centerness.sum()).to(dtype).clamp(min=1e-6)
        boxes = [target["boxes"].reshape(-1, 4) for target in targets]
        return model.assignment_mask(student.predictions, boxes).sum().to(dtype).clamp(min=1.0)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"cls", "reg"}``, each times its weight.

        Args:
            student: its ``levels`` ``L`` maps ``(N, C, Hi, Wi)`` and ``predictions`` (for the
                assignment and valid mask).
            teacher: its paired ``levels``, ``predictions`` on them and ``model``.
            targets: per image ``{"boxes": (M, 4), "labels": (M,)}`` in input pixels.
            iteration: unused.
        """
        del iteration
        if teacher.predictions is None or teacher.model is None:
            raise ConfigError(f"distillation term {self.name!r} needs the teacher's predictions and detector")
        teacher_model = teacher.model
        cross = self.cross_predictions(student, teacher)
        cross_logits, cross_box = teacher_model.flatten_predictions(cross)[:2]
        teacher_logits, teacher_box = teacher_model.flatten_predictions(teacher.predictions)[:2]
        check_same_prediction_shape(cross_logits, teacher_logits, term=self.name)
        check_same_prediction_shape(
            student.model.flatten_predictions(student.predictions)[0], teacher_logits, term=self.name
        )

        dtype = torch.promote_types(cross_logits.dtype, torch.float32)
        with torch.autocast(device_type=cross_logits.device.type, enabled=False):
            cross_logits, cross_box = cross_logits.to(dtype), cross_box.to(dtype)
            teacher_logits, teacher_box = teacher_logits.detach().to(dtype), teacher_box.detach().to(dtype)
            valid = student.model.classification_valid_mask(student.predictions, targets).to(dtype)  # (N, R)
            norm = self._normalizer(student, targets, dtype)
            cls_terms = kd_quality_focal_loss(cross_logits, teacher_logits, beta=self.kd_beta)
            cls = (cls_terms * valid[..., None]).sum() / norm
            cross_boxes = self._boxes(teacher_model, cross, cross_box)
            teacher_boxes = self._boxes(teacher_model, teacher.predictions, teacher_box)
            # The teacher's confidence weighs each location: boxes of background are not imitated.
            box_weight = teacher_logits.max(dim=-1).values.sigmoid() * valid
            reg = (aligned_box_loss(cross_boxes, teacher_boxes, kind=self.reg_kd_loss) * box_weight).sum() / norm
        return {"cls": cls * self.cls_kd_weight, "reg": reg * self.reg_kd_weight}

    def extra_repr(self) -> str:
        return (
            f"reused_teacher_head_idx={self.reused_teacher_head_idx}, cls_kd_weight={self.cls_kd_weight}, "
            f"reg_kd_weight={self.reg_kd_weight}, reg_kd_loss={self.reg_kd_loss!r}, kd_beta={self.kd_beta}, "
            f"normalizer={self.normalizer!r}, align_statistics={self.align_statistics}"
        )


def _check_heads(student: DenseDetector, teacher: DenseDetector, index: int) -> None:
    where = "distill.losses entry of type 'crosskd'"
    for role, model in (("student", student), ("teacher", teacher)):
        if not all(hasattr(model.head, attr) for attr in ("tower_features", "predict_from", "num_tower_convs")):
            raise ConfigError(
                f"{where}: the {role}'s head ({type(model.head).__name__}) cannot be cut between its tower convs"
            )
    depths = (student.head.num_tower_convs, teacher.head.num_tower_convs)
    if depths[0] != depths[1]:
        raise ConfigError(
            f"{where}: the student's head has {depths[0]} tower convs and the teacher's {depths[1]}; "
            "the student's maps after conv k must fit the teacher's conv k + 1"
        )
    if not 0 <= index <= depths[0]:
        raise ConfigError(f"{where}: reused_teacher_head_idx must lie in [0, {depths[0]}], got {index}")


def build_crosskd_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> CrossKDLoss:
    """The ``crosskd`` term of ``distill.losses``.

    Options and their defaults for a RetinaNet student (an FCOS student: :data:`FCOS_DEFAULTS`):
    ``reused_teacher_head_idx`` 3 (FCOS 2), ``cls_kd_weight`` 1.0 (0.4), ``reg_kd_weight`` 1.0
    (0.75), ``reg_kd_loss`` giou (iou), ``kd_beta`` 1.0, ``normalizer`` positives (centerness),
    ``align_statistics`` true, ``channel_adapter`` false, ``weight`` 1.0, ``name`` loss_crosskd.

    Raises:
        ConfigError: an unknown option or value, or a pair whose heads differ: detector type,
            strides, classes, anchors, number of tower convs, or widths without ``channel_adapter``.
    """
    family = _FAMILIES.get(type(student))
    if family is None:
        raise ConfigError(
            "distill.losses entry of type 'crosskd' needs an 'fcos' or 'retinanet' student, "
            f"got {type(student).__name__}"
        )
    resolved = resolve_options(options, {**OPTIONS, **family.defaults}, term="crosskd")
    check_same_layout(student, teacher, term="crosskd")
    teacher_detector = dense_detector_of(teacher, term="crosskd")
    index = resolved["reused_teacher_head_idx"]
    if not isinstance(index, int):
        raise ConfigError(
            f"distill.losses entry of type 'crosskd': reused_teacher_head_idx must be an integer, got {index!r}"
        )
    _check_heads(student, teacher_detector, index)
    if resolved["normalizer"] == "centerness" and not isinstance(student, FCOS):
        raise ConfigError("distill.losses entry of type 'crosskd': normalizer 'centerness' needs an FCOS student")
    try:
        return CrossKDLoss(**resolved, **fpn_widths(student, teacher, term="crosskd"), boxes=family.boxes)
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'crosskd': {exc}") from None
