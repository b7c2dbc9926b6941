"""GID's general instances of a teacher/student pair on a batch, for drawing on the images.

The selection is the one the GID term makes during training: the same decoding, the same
:func:`~msadkit.distill.gid.selection.select_from_outputs` and the same defaults
(:data:`~msadkit.distill.gid.selection.SELECTION_OPTIONS`), updated from the student run's ``gid``
loss entry when it has one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from msadkit.distill.gid.selection import SELECTION_OPTIONS, GeneralInstances, select_from_outputs

__all__ = ["gi_options", "general_instances", "instances_as_dicts"]


def gi_options(config: dict[str, Any] | None) -> dict[str, Any]:
    """The selection options: :data:`SELECTION_OPTIONS` updated from a ``distill.losses`` entry of
    type ``gid`` in ``config`` (a student run's config), if any."""
    options = dict(SELECTION_OPTIONS)
    for entry in ((config or {}).get("distill") or {}).get("losses") or []:
        if isinstance(entry, dict) and entry.get("type") == "gid":
            options.update({key: entry[key] for key in SELECTION_OPTIONS if key in entry})
    return options


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
        options: overrides of :data:`SELECTION_OPTIONS`.

    Returns:
        One :class:`~msadkit.distill.gid.selection.GeneralInstances` per image, boxes in the
        batch's pixels.
    """
    unknown = sorted(set(options) - set(SELECTION_OPTIONS))
    if unknown:
        raise TypeError(f"general_instances: unknown options {unknown}; known: {sorted(SELECTION_OPTIONS)}")
    settings = {**SELECTION_OPTIONS, **options}
    with_quality = settings.pop("fcos_centerness")
    teacher_out = teacher.distillation_outputs(images, image_sizes, need_predictions=True)
    teacher_model = teacher_out.model if teacher_out.model is not None else teacher
    teacher_dense = teacher_model.decode_dense(teacher_out.predictions, with_quality=with_quality)
    student_predictions = student.predict(student.select_levels(student.extract_features(images)))
    student_dense = student.decode_dense(student_predictions, with_quality=with_quality)
    return select_from_outputs(teacher_dense, student_dense, image_sizes, **settings)


def instances_as_dicts(instances: GeneralInstances) -> list[dict[str, Any]]:
    """``[{"box": [x1, y1, x2, y2], "score": float, "from_teacher": bool}, ...]`` best first."""
    return [
        {"box": [float(v) for v in box], "score": float(score), "from_teacher": bool(flag)}
        for box, score, flag in zip(instances.boxes.cpu(), instances.scores.cpu(), instances.from_teacher.cpu())
    ]
