"""GID term: general instance distillation with feature, relation and response losses (docs/methods.md §3).

Per batch:

1. Both heads' outputs are flattened over all levels and decoded to boxes: FCOS as
   ``location -+ ltrb * stride``, RetinaNet with its box coder on the anchors. Boxes are clipped to
   the padded batch.
2. :func:`~msadkit.distill.gid_selection.select_general_instances` picks the general instances
   (GIs) from ``sigmoid(cls_logits)`` of both models. For FCOS the scores are the classification
   probabilities alone by default (the paper's "class probabilities"); ``fcos_centerness: true``
   multiplies them by ``sigmoid(centerness)``, the quality FCOS ranks detections by.
3. Feature loss on the GI boxes (ROIAlign on the scale-assigned level, the student map through a
   per-level adapter when the FPN widths differ), relation loss on the pooled instances, and
   response loss on the locations/anchors that the STUDENT's own assignment gives to the GI boxes
   (RetinaNet: :meth:`~msadkit.modeling.retinanet.RetinaNet.assign_boxes`; FCOS: its target
   assignment with the GI boxes as targets, i.e. centre region and size range).

The returned losses are already multiplied by their GID sub-weights (defaults of
:class:`~msadkit.distill.gid_losses.GIDWeights`); the term's own ``weight`` (default 1) multiplies
all four on top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from msadkit.distill.gid_losses import (
    GIDWeights,
    flatten_instances,
    gid_feature_loss,
    gid_relation_loss,
    gid_response_loss,
)
from msadkit.distill.gid_selection import SCORE_MODES, GeneralInstances, select_general_instances
from msadkit.errors import ConfigError
from msadkit.modeling.dense_detector import DenseDetector
from msadkit.modeling.distillation.distiller import DistillationLoss
from msadkit.modeling.distillation.outputs import StudentOutputs, TeacherOutputs
from msadkit.modeling.distillation.terms.layout import (
    check_same_layout,
    check_same_prediction_shape,
    plain_detector,
)
from msadkit.modeling.distillation.terms.options import resolve_options
from msadkit.modeling.distillation.terms.registry import register_term
from msadkit.modeling.fcos import FCOS
from msadkit.modeling.retinanet import RetinaNet

__all__ = [
    "DenseOutputs",
    "GeneralInstanceDistillationTerm",
    "build_gid_term",
    "decode_dense_outputs",
    "fpn_channels",
    "response_mask",
]


@dataclass
class DenseOutputs:
    """A dense head's outputs flattened over all levels (``R`` locations/anchors).

    Attributes:
        cls_logits: ``(N, R, K)`` classification logits.
        box_reg: ``(N, R, 4)`` raw box outputs (RetinaNet deltas, FCOS stride-normalised ltrb).
        boxes: ``(N, R, 4)`` float32 decoded ``(x1, y1, x2, y2)`` boxes in input pixels.
        scores: ``(N, R, K)`` float32 probabilities the GIs are selected from.
    """

    cls_logits: Tensor
    box_reg: Tensor
    boxes: Tensor
    scores: Tensor


def decode_dense_outputs(
    model: DenseDetector, predictions: dict[str, list[Tensor]], *, fcos_centerness: bool = False
) -> DenseOutputs:
    """Flatten and decode the raw predictions of an FCOS or RetinaNet detector.

    Args:
        model: the detector that made ``predictions`` (its strides, anchors and box coder are used).
        predictions: its raw per-level head outputs.
        fcos_centerness: FCOS only: scores are ``sigmoid(cls) * sigmoid(centerness)`` instead of
            ``sigmoid(cls)``.
    """
    if isinstance(model, RetinaNet):
        cls_logits, deltas = model.flatten_predictions(predictions)
        anchors = torch.cat(model.anchors(model.feature_shapes(predictions))).to(deltas.device)
        boxes = model.box_coder.decode(deltas.detach(), anchors.unsqueeze(0))
        scores = cls_logits.detach().float().sigmoid()
        return DenseOutputs(cls_logits, deltas, boxes, scores)
    if isinstance(model, FCOS):
        cls_logits, ltrb, centerness = model.flatten_predictions(predictions)
        locations = model.locations(predictions)
        points = torch.cat(locations)
        strides = torch.cat(
            [torch.full((len(loc), 1), float(s), device=points.device) for loc, s in zip(locations, model.strides)]
        )
        distances = ltrb.detach().float() * strides
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        scores = cls_logits.detach().float().sigmoid()
        if fcos_centerness:
            scores = scores * centerness.detach().float().sigmoid().unsqueeze(-1)
        return DenseOutputs(cls_logits, ltrb, boxes, scores)
    raise TypeError(f"decode_dense_outputs: expected an FCOS or RetinaNet detector, got {type(model).__name__}")


@torch.no_grad()
def response_mask(
    model: DenseDetector, predictions: dict[str, list[Tensor]], boxes: list[Tensor]
) -> Tensor:
    """``(N, R)`` bool: the locations/anchors the detector's own assignment gives to ``boxes``.

    Args:
        model: the student detector.
        predictions: its raw per-level outputs (for the grid shapes).
        boxes: per image ``(Mi, 4)`` GI boxes in input pixels.
    """
    if isinstance(model, RetinaNet):
        anchors = torch.cat(model.anchors(model.feature_shapes(predictions)))
        return torch.stack([model.assign_boxes(anchors, b.to(anchors.device)) for b in boxes])
    if isinstance(model, FCOS):
        targets = [
            {"boxes": b, "labels": torch.zeros(b.shape[0], dtype=torch.int64, device=b.device)} for b in boxes
        ]
        return model.assign(predictions, targets).labels < model.num_classes
    raise TypeError(f"response_mask: expected an FCOS or RetinaNet detector, got {type(model).__name__}")


def fpn_channels(model: nn.Module, *, role: str) -> int:
    """Channels of the FPN maps a detector's head runs on."""
    channels = getattr(getattr(model, "backbone", None), "out_channels", None)
    if not isinstance(channels, int):
        raise ConfigError(
            f"distill.losses type 'gid': cannot tell the FPN channels of the {role} ({type(model).__name__})"
        )
    return channels


class GeneralInstanceDistillationTerm(DistillationLoss):
    """GID: feature, relation and response distillation on general instances.

    Args:
        name: prefix of the returned keys.
        weight: factor applied by the distiller on top of the GID sub-weights.
        student_channels: FPN channels of the student.
        teacher_channels: FPN channels of the teacher; when they differ a trainable adapter per level
            maps the student's maps to the teacher's width.
        num_levels: number of pyramid levels (adapters).
        weights: the GID sub-weights.
        iou_threshold: NMS IoU threshold of the GI selection.
        top_k: GIs per image.
        score_mode: ``"max_abs_diff"`` (paper) or ``"diff_of_max"`` (public reproduction).
        min_box_size: GI candidates with a side shorter than this (pixels, after clipping) are dropped.
        pre_nms_top_k: candidates per image entering NMS.
        relation_per_image: relation pairs within each image (True) or across the batch.
        output_size: ROIAlign output side.
        adapter_kernel_size: 1 or 3, kernel of the adapters.
        fcos_centerness: FCOS scores include centerness (see the module docstring).
    """

    needs_teacher_predictions = True

    def __init__(
        self,
        *,
        name: str = "loss_gid",
        weight: float = 1.0,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
        weights: GIDWeights = GIDWeights(),
        iou_threshold: float = 0.3,
        top_k: int = 10,
        score_mode: str = "max_abs_diff",
        min_box_size: float = 1.0,
        pre_nms_top_k: int = 3000,
        relation_per_image: bool = True,
        output_size: int = 10,
        adapter_kernel_size: int = 1,
        fcos_centerness: bool = False,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
        if top_k < 0 or pre_nms_top_k < 1 or output_size < 1 or min_box_size < 0:
            raise ValueError(
                f"top_k >= 0, pre_nms_top_k >= 1, output_size >= 1 and min_box_size >= 0 are required, got "
                f"top_k={top_k}, pre_nms_top_k={pre_nms_top_k}, output_size={output_size}, min_box_size={min_box_size}"
            )
        if adapter_kernel_size not in (1, 3):
            raise ValueError(f"adapter_kernel_size must be 1 or 3, got {adapter_kernel_size}")
        self.weights = weights
        self.iou_threshold = float(iou_threshold)
        self.top_k = int(top_k)
        self.score_mode = score_mode
        self.min_box_size = float(min_box_size)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.relation_per_image = bool(relation_per_image)
        self.output_size = int(output_size)
        self.fcos_centerness = bool(fcos_centerness)
        # A ModuleList registers the adapters: they are trained with the student and checkpointed
        # with the distiller (the public reproduction kept them in a plain list, docs/methods.md §3.2).
        self.adapters: nn.ModuleList | None = None
        if student_channels != teacher_channels:
            self.adapters = nn.ModuleList(
                nn.Conv2d(
                    student_channels, teacher_channels, adapter_kernel_size, padding=adapter_kernel_size // 2
                )
                for _ in range(num_levels)
            )

    def select(
        self, student: DenseOutputs, teacher: DenseOutputs, image_shape: tuple[int, int]
    ) -> list[GeneralInstances]:
        """The GIs of every image, boxes clipped to the padded ``(H, W)``."""
        height, width = image_shape

        def clipped(boxes: Tensor) -> Tensor:
            boxes = boxes.clone()
            boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
            boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
            return boxes

        return select_general_instances(
            teacher.scores,
            student.scores,
            clipped(teacher.boxes),
            clipped(student.boxes),
            iou_threshold=self.iou_threshold,
            top_k=self.top_k,
            score_mode=self.score_mode,
            min_box_size=self.min_box_size,
            pre_nms_top_k=self.pre_nms_top_k,
        )

    def forward(
        self,
        student: StudentOutputs,
        teacher: TeacherOutputs,
        targets: list[dict[str, Tensor]],
        iteration: int,
    ) -> dict[str, Tensor]:
        """``{"feature", "relation", "response_cls", "response_reg"}``, each times its GID sub-weight."""
        if teacher.predictions is None or teacher.model is None:
            raise ConfigError(f"distillation term {self.name!r} needs the teacher's predictions and detector")
        if len(teacher.levels) != len(student.levels):
            raise ConfigError(
                f"distillation term {self.name!r}: the teacher gives {len(teacher.levels)} levels and the "
                f"student {len(student.levels)}"
            )
        model = student.model
        student_out = decode_dense_outputs(model, student.predictions, fcos_centerness=self.fcos_centerness)
        teacher_out = decode_dense_outputs(teacher.model, teacher.predictions, fcos_centerness=self.fcos_centerness)
        check_same_prediction_shape(student_out.cls_logits, teacher_out.cls_logits, term=self.name)

        instances = self.select(student_out, teacher_out, student.image_shape)
        boxes = [gi.boxes for gi in instances]

        feature, student_rois, teacher_rois = gid_feature_loss(
            student.levels,
            teacher.levels,
            boxes,
            list(model.strides),
            output_size=self.output_size,
            adapter=self.adapters,
        )
        student_embeddings, image_index = flatten_instances(student_rois)
        teacher_embeddings, _ = flatten_instances(teacher_rois)
        relation = gid_relation_loss(
            student_embeddings, teacher_embeddings, image_index, per_image=self.relation_per_image
        )
        mask = response_mask(model, student.predictions, boxes)
        response = gid_response_loss(
            student_out.cls_logits, teacher_out.cls_logits, student_out.box_reg, teacher_out.box_reg, mask
        )
        return {
            "feature": feature * self.weights.feature,
            "relation": relation * self.weights.relation,
            "response_cls": response["cls"] * self.weights.response_cls,
            "response_reg": response["reg"] * self.weights.response_reg,
        }


_DEFAULTS: dict[str, Any] = {
    "iou_threshold": 0.3,
    "top_k": 10,
    "score_mode": "max_abs_diff",
    "min_box_size": 1.0,
    "pre_nms_top_k": 3000,
    "relation_per_image": True,
    "feature_weight": GIDWeights.feature,
    "relation_weight": GIDWeights.relation,
    "response_cls_weight": GIDWeights.response_cls,
    "response_reg_weight": GIDWeights.response_reg,
    "output_size": 10,
    "adapter_kernel_size": 1,
    "fcos_centerness": False,
}


@register_term("gid")
def build_gid_term(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module, config: dict[str, Any]
) -> GeneralInstanceDistillationTerm:
    """The ``gid`` term of ``distill.losses``.

    Options: ``iou_threshold`` 0.3, ``top_k`` 10, ``score_mode`` max_abs_diff | diff_of_max,
    ``min_box_size`` 1.0, ``pre_nms_top_k`` 3000, ``relation_per_image`` true, ``feature_weight``
    5e-4, ``relation_weight`` 40, ``response_cls_weight`` 0.1, ``response_reg_weight`` 1.0,
    ``output_size`` 10, ``adapter_kernel_size`` 1, ``fcos_centerness`` false, ``weight`` 1.0,
    ``name`` loss_gid. Teacher and student must be the same detector type with the same
    strides/anchors/classes, otherwise :class:`ConfigError`.
    """
    resolved = resolve_options(options, _DEFAULTS, term="gid")
    check_same_layout(student, teacher, term="gid")
    try:
        weights = GIDWeights(
            feature=resolved.pop("feature_weight"),
            relation=resolved.pop("relation_weight"),
            response_cls=resolved.pop("response_cls_weight"),
            response_reg=resolved.pop("response_reg_weight"),
        )
        return GeneralInstanceDistillationTerm(
            **resolved,
            weights=weights,
            student_channels=fpn_channels(student, role="student"),
            teacher_channels=fpn_channels(plain_detector(teacher, term="gid"), role="teacher"),
            num_levels=len(student.strides),
        )
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'gid': {exc}") from None
