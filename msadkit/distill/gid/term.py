"""GID term: general instance distillation with feature, relation and response losses (docs/methods.md §3).

Per batch:

1. Both heads' outputs are flattened over all levels and decoded to boxes: FCOS as
   ``location -+ ltrb * stride``, RetinaNet with its box coder on the anchors. Boxes are clipped to
   each image's own valid size (padding is not image).
2. :func:`~msadkit.distill.gid.selection.select_general_instances` picks the general instances
   (GIs) from ``sigmoid(cls_logits)`` of both models. For FCOS the scores are the classification
   probabilities alone by default (the paper's "class probabilities"); ``fcos_centerness: true``
   multiplies them by ``sigmoid(centerness)``, the quality FCOS ranks detections by.
3. Feature loss on the GI boxes (ROIAlign on the scale-assigned level, the student map through a
   per-level adapter when the FPN widths differ), relation loss on the pooled instances, and
   response loss on the locations/anchors that the STUDENT's own assignment gives to the GI boxes
   (RetinaNet: :meth:`~msadkit.modeling.detectors.retinanet.RetinaNet.assign_boxes`; FCOS: its target
   assignment with the GI boxes as targets, i.e. centre region and size range).

The returned losses are already multiplied by their GID sub-weights (defaults of
:class:`~msadkit.distill.gid.losses.GIDWeights`); the term's own ``weight`` (default 1) multiplies
all four on top.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.gid.losses import (
    GIDWeights,
    flatten_instances,
    gid_feature_loss,
    gid_relation_loss,
    gid_response_loss,
)
from msadkit.distill.gid.selection import (
    SCORE_MODES,
    SELECTION_OPTIONS,
    SELECTION_ORDERS,
    GeneralInstances,
    select_from_outputs,
)
from msadkit.distill.layout import check_same_layout, check_same_prediction_shape, fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import DenseOutputs, StudentOutputs, TeacherOutputs

__all__ = ["GeneralInstanceDistillationTerm", "build_gid_term", "OPTIONS"]


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
        selection_order: ``"filter_first"`` or ``"top_k_first"`` (the public reproduction), see
            :func:`~msadkit.distill.gid.selection.select_general_instances`.
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
        selection_order: str = "filter_first",
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
        if selection_order not in SELECTION_ORDERS:
            raise ValueError(f"selection_order must be one of {SELECTION_ORDERS}, got {selection_order!r}")
        if adapter_kernel_size not in (1, 3):
            raise ValueError(f"adapter_kernel_size must be 1 or 3, got {adapter_kernel_size}")
        self.weights = weights
        self.iou_threshold = float(iou_threshold)
        self.top_k = int(top_k)
        self.score_mode = score_mode
        self.min_box_size = float(min_box_size)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.selection_order = selection_order
        self.relation_per_image = bool(relation_per_image)
        self.output_size = int(output_size)
        self.fcos_centerness = bool(fcos_centerness)
        # A ModuleList registers the adapters: they are trained with the student and checkpointed
        # with the distiller (the public reproduction kept them in a plain list, docs/methods.md §3.2).
        self.adapters = adapters_if_widths_differ(
            student_channels, teacher_channels, num_levels=num_levels, kernel_size=adapter_kernel_size
        )

    def select(
        self, student: DenseOutputs, teacher: DenseOutputs, image_sizes: list[tuple[int, int]]
    ) -> list[GeneralInstances]:
        """The GIs of every image, boxes clipped to that image's valid ``(h, w)``."""
        return select_from_outputs(
            teacher,
            student,
            image_sizes,
            iou_threshold=self.iou_threshold,
            top_k=self.top_k,
            score_mode=self.score_mode,
            min_box_size=self.min_box_size,
            pre_nms_top_k=self.pre_nms_top_k,
            selection_order=self.selection_order,
        )

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"feature", "relation", "response_cls", "response_reg"}``, each times its GID sub-weight."""
        if teacher.predictions is None or teacher.model is None:
            raise ConfigError(f"distillation term {self.name!r} needs the teacher's predictions and detector")
        if len(teacher.levels) != len(student.levels):
            raise ConfigError(
                f"distillation term {self.name!r}: the teacher gives {len(teacher.levels)} levels and the "
                f"student {len(student.levels)}"
            )
        model = student.model
        student_out = model.decode_dense(student.predictions, with_quality=self.fcos_centerness)
        teacher_out = teacher.model.decode_dense(teacher.predictions, with_quality=self.fcos_centerness)
        check_same_prediction_shape(student_out.cls_logits, teacher_out.cls_logits, term=self.name)

        image_sizes = student.image_sizes or [student.image_shape] * student_out.boxes.shape[0]
        instances = self.select(student_out, teacher_out, image_sizes)
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
        mask = model.assignment_mask(student.predictions, boxes)
        response = gid_response_loss(
            student_out.cls_logits, teacher_out.cls_logits, student_out.box_reg, teacher_out.box_reg, mask
        )
        return {
            "feature": feature * self.weights.feature,
            "relation": relation * self.weights.relation,
            "response_cls": response["cls"] * self.weights.response_cls,
            "response_reg": response["reg"] * self.weights.response_reg,
        }


# Options of a ``type: gid`` entry and their defaults: the selection's (shared with the notebooks'
# drawing of general instances) and the losses'.
OPTIONS: dict[str, Any] = {
    **SELECTION_OPTIONS,
    "relation_per_image": True,
    "feature_weight": GIDWeights.feature,
    "relation_weight": GIDWeights.relation,
    "response_cls_weight": GIDWeights.response_cls,
    "response_reg_weight": GIDWeights.response_reg,
    "output_size": 10,
    "adapter_kernel_size": 1,
}


def build_gid_term(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module
) -> GeneralInstanceDistillationTerm:
    """The ``gid`` term of ``distill.losses``.

    Options: ``iou_threshold`` 0.3, ``top_k`` 10, ``score_mode`` max_abs_diff | diff_of_max,
    ``min_box_size`` 1.0, ``pre_nms_top_k`` 3000, ``selection_order`` filter_first | top_k_first,
    ``relation_per_image`` true, ``feature_weight``
    5e-4, ``relation_weight`` 40, ``response_cls_weight`` 0.1, ``response_reg_weight`` 1.0,
    ``output_size`` 10, ``adapter_kernel_size`` 1, ``fcos_centerness`` false, ``weight`` 1.0,
    ``name`` loss_gid. Teacher and student must be the same detector type with the same
    strides/anchors/classes, otherwise :class:`ConfigError`.
    """
    resolved = resolve_options(options, OPTIONS, term="gid")
    check_same_layout(student, teacher, term="gid")
    try:
        weights = GIDWeights(
            feature=resolved.pop("feature_weight"),
            relation=resolved.pop("relation_weight"),
            response_cls=resolved.pop("response_cls_weight"),
            response_reg=resolved.pop("response_reg_weight"),
        )
        return GeneralInstanceDistillationTerm(
            **resolved, weights=weights, **fpn_widths(student, teacher, term="gid"), num_levels=len(student.strides)
        )
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'gid': {exc}") from None
