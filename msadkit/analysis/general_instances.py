"""GID's general instances of a teacher/student pair on a batch, for drawing on the images.

The selection is the one the GID loss term makes during training
(:func:`msadkit.distill.gid_selection.select_general_instances` on both heads' decoded outputs),
with the options of the student run's ``gid`` loss entry when it has one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from msadkit.distill.gid_selection import GeneralInstances, select_general_instances

__all__ = ["GI_DEFAULTS", "gi_options", "general_instances", "instances_as_dicts"]

# Selection options (docs/methods.md §3.1: NMS IoU 0.3, top 10 per image, the paper's score).
GI_DEFAULTS: dict[str, Any] = {
    "iou_threshold": 0.3,
    "top_k": 10,
    "score_mode": "max_abs_diff",
    "min_box_size": 0.0,
    "pre_nms_top_k": 3000,
    "fcos_centerness": False,
}


def gi_options(config: dict[str, Any] | None) -> dict[str, Any]:
    """The selection options: :data:`GI_DEFAULTS` updated from a ``distill.losses`` entry of type
    ``gid`` in ``config`` (a student run's config), if any."""
    options = dict(GI_DEFAULTS)
    for entry in ((config or {}).get("distill") or {}).get("losses") or []:
        if isinstance(entry, dict) and entry.get("type") == "gid":
            options.update({key: entry[key] for key in GI_DEFAULTS if key in entry})
    return options


def _clipped(boxes: Tensor, image_shape: tuple[int, int]) -> Tensor:
    boxes = boxes.clone()
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, image_shape[1])
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, image_shape[0])
    return boxes


@torch.no_grad()
def general_instances(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    image_sizes: list[tuple[int, int]],
    **options: Any,
) -> list[GeneralInstances]:
    """The general instances of each image of the batch.

    Args:
        teacher: the frozen teacher (a detector or an MSAD teacher, whose fused-branch head is used).
        student: the student detector (FCOS or RetinaNet with the teacher's level layout).
        images: ``(N, 3, H, W)`` normalised, padded batch.
        image_sizes: valid ``(h, w)`` per image.
        options: overrides of :data:`GI_DEFAULTS`.

    Returns:
        One :class:`~msadkit.distill.gid_selection.GeneralInstances` per image, boxes in the
        batch's pixels.
    """
    from msadkit.modeling.distillation.terms.gid import decode_dense_outputs

    settings = {**GI_DEFAULTS, **options}
    image_shape = (images.shape[-2], images.shape[-1])
    teacher_out = teacher.distillation_outputs(images, image_sizes, need_predictions=True)
    teacher_model = teacher_out.model if teacher_out.model is not None else teacher
    centerness = settings["fcos_centerness"]
    teacher_dense = decode_dense_outputs(teacher_model, teacher_out.predictions, fcos_centerness=centerness)
    student_predictions = student.predict(student.select_levels(student.extract_features(images)))
    student_dense = decode_dense_outputs(student, student_predictions, fcos_centerness=centerness)
    return select_general_instances(
        teacher_dense.scores,
        student_dense.scores,
        _clipped(teacher_dense.boxes, image_shape),
        _clipped(student_dense.boxes, image_shape),
        iou_threshold=settings["iou_threshold"],
        top_k=settings["top_k"],
        score_mode=settings["score_mode"],
        min_box_size=settings["min_box_size"],
        pre_nms_top_k=settings["pre_nms_top_k"],
    )


def instances_as_dicts(instances: GeneralInstances) -> list[dict[str, Any]]:
    """``[{"box": [x1, y1, x2, y2], "score": float, "from_teacher": bool}, ...]`` best first."""
    return [
        {"box": [float(v) for v in box], "score": float(score), "from_teacher": bool(flag)}
        for box, score, flag in zip(instances.boxes.cpu(), instances.scores.cpu(), instances.from_teacher.cpu())
    ]
