"""General Instance Selection Module (GISM) of GID (Dai et al., CVPR 2021, arXiv 2103.02340).

General instances (GIs) are the locations where teacher and student disagree most, whether or not
they hold an object. Each location gets a GI score from the two models' class probabilities and a
box from whichever model is more confident there; NMS and a top-k then keep a few GIs per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from msadkit.modeling.outputs import DenseOutputs

__all__ = [
    "GeneralInstances",
    "SCORE_MODES",
    "SELECTION_ORDERS",
    "SELECTION_OPTIONS",
    "gi_scores",
    "select_general_instances",
    "select_from_outputs",
    "clip_to_images",
]

SCORE_MODES = ("max_abs_diff", "diff_of_max")
# "filter_first": drop small boxes, then take the pre-NMS top-k of what is left (msadkit).
# "top_k_first": take the pre-NMS top-k of all locations, then drop the small boxes among them
# (the public reproduction's find_top_rpn_proposals), so fewer than top-k may enter NMS.
SELECTION_ORDERS = ("filter_first", "top_k_first")


@dataclass(frozen=True)
class GeneralInstances:
    """The general instances selected in one image, best first.

    Attributes:
        indices: ``(k,)`` int64 indices into the ``R`` locations of the image.
        boxes: ``(k, 4)`` float32 ``(x1, y1, x2, y2)`` GI boxes.
        scores: ``(k,)`` float32 GI scores (decreasing).
        from_teacher: ``(k,)`` bool, ``True`` where the box came from the teacher.
    """

    indices: Tensor
    boxes: Tensor
    scores: Tensor
    from_teacher: Tensor

    def __len__(self) -> int:
        return int(self.indices.numel())


def _check_inputs(
    teacher_scores: Tensor, student_scores: Tensor, teacher_boxes: Tensor, student_boxes: Tensor
) -> None:
    if teacher_scores.dim() != 3 or teacher_scores.shape != student_scores.shape:
        raise ValueError(
            "select_general_instances: teacher_scores and student_scores must both have shape (N, R, K), "
            f"got teacher_scores {tuple(teacher_scores.shape)} and student_scores {tuple(student_scores.shape)}"
        )
    expected_boxes = (*teacher_scores.shape[:2], 4)
    for name, boxes in (("teacher_boxes", teacher_boxes), ("student_boxes", student_boxes)):
        if tuple(boxes.shape) != expected_boxes:
            raise ValueError(
                f"select_general_instances: {name} must have shape (N, R, 4) = {expected_boxes} to match "
                f"the scores {tuple(teacher_scores.shape)}, got {tuple(boxes.shape)}"
            )


def gi_scores(teacher_scores: Tensor, student_scores: Tensor, *, score_mode: str = "max_abs_diff") -> Tensor:
    """GI score of every location.

    Args:
        teacher_scores: ``(..., K)`` teacher class probabilities.
        student_scores: ``(..., K)`` student class probabilities.
        score_mode: ``"max_abs_diff"`` (the paper): ``max_c |p_t - p_s|``; ``"diff_of_max"`` (the
            public reproduction): ``|max_c p_t - max_c p_s|``.

    Returns:
        ``(...)`` GI scores in ``[0, 1]`` for probabilities.
    """
    if score_mode == "max_abs_diff":
        return (teacher_scores - student_scores).abs().amax(dim=-1)
    if score_mode == "diff_of_max":
        return (teacher_scores.amax(dim=-1) - student_scores.amax(dim=-1)).abs()
    raise ValueError(f"gi_scores: score_mode must be one of {SCORE_MODES}, got {score_mode!r}")


@torch.no_grad()
def select_general_instances(
    teacher_scores: Tensor,
    student_scores: Tensor,
    teacher_boxes: Tensor,
    student_boxes: Tensor,
    *,
    iou_threshold: float = 0.3,
    top_k: int = 10,
    score_mode: str = "max_abs_diff",
    min_box_size: float = 0.0,
    pre_nms_top_k: int | None = 3000,
    selection_order: str = "filter_first",
) -> list[GeneralInstances]:
    """Select the general instances of each image.

    Per location the GI score is computed by :func:`gi_scores`; the GI box is the teacher's box
    where the teacher's highest class probability is at least the student's (ties go to the
    teacher), else the student's. Boxes with a side shorter than ``min_box_size`` are dropped and
    the ``pre_nms_top_k`` best locations kept, in the order ``selection_order`` says; they go
    through NMS at ``iou_threshold`` and the best ``top_k`` survivors are kept. Everything runs
    without gradient: GIs are regions to distil on, not something to learn.

    Args:
        teacher_scores: ``(N, R, K)`` teacher class probabilities (after sigmoid) over all ``R``
            locations/anchors of all levels.
        student_scores: ``(N, R, K)`` student class probabilities.
        teacher_boxes: ``(N, R, 4)`` teacher decoded boxes, ``(x1, y1, x2, y2)``.
        student_boxes: ``(N, R, 4)`` student decoded boxes.
        iou_threshold: NMS IoU threshold; a box overlapping a better one by more is suppressed.
        top_k: number of GIs kept per image (fewer if fewer locations survive).
        score_mode: ``"max_abs_diff"`` (paper, default) or ``"diff_of_max"`` (reproduction).
        min_box_size: minimum box width and height; ``0`` keeps every box.
        pre_nms_top_k: locations per image entering NMS, by decreasing score; NMS over all
            locations of a large image is slow and the top-k rarely reaches that deep (the public
            reproduction uses 3000). ``None`` sends every location.
        selection_order: ``"filter_first"`` (the top-k is taken among the boxes large enough) or
            ``"top_k_first"`` (the public reproduction: the top-k of all locations, then the small
            boxes among them are dropped).

    Returns:
        One :class:`GeneralInstances` per image.

    Raises:
        ValueError: on mismatched shapes, an unknown ``score_mode``, an ``iou_threshold`` outside
            ``[0, 1]`` or negative counts.
    """
    _check_inputs(teacher_scores, student_scores, teacher_boxes, student_boxes)
    if score_mode not in SCORE_MODES:
        raise ValueError(f"select_general_instances: score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"select_general_instances: iou_threshold must lie in [0, 1], got {iou_threshold}")
    if top_k < 0:
        raise ValueError(f"select_general_instances: top_k must be >= 0, got {top_k}")
    if pre_nms_top_k is not None and pre_nms_top_k < 1:
        raise ValueError(f"select_general_instances: pre_nms_top_k must be >= 1 or None, got {pre_nms_top_k}")
    if selection_order not in SELECTION_ORDERS:
        raise ValueError(
            f"select_general_instances: selection_order must be one of {SELECTION_ORDERS}, got {selection_order!r}"
        )

    teacher_scores = teacher_scores.float()
    student_scores = student_scores.float()
    num_images, num_locations = teacher_scores.shape[:2]
    device = teacher_scores.device

    scores = gi_scores(teacher_scores, student_scores, score_mode=score_mode)
    from_teacher = teacher_scores.amax(dim=-1) >= student_scores.amax(dim=-1)
    boxes = torch.where(from_teacher.unsqueeze(-1), teacher_boxes.float(), student_boxes.float())

    sides = boxes[..., 2:] - boxes[..., :2]
    too_small = (sides < min_box_size).any(dim=-1) if min_box_size > 0 else torch.zeros_like(from_teacher)
    if selection_order == "filter_first":
        scores = scores.masked_fill(too_small, float("-inf"))

    num_candidates = num_locations if pre_nms_top_k is None else min(pre_nms_top_k, num_locations)
    candidate_scores, candidate_indices = scores.topk(num_candidates, dim=1)  # (N, P)
    candidate_boxes = boxes.gather(1, candidate_indices.unsqueeze(-1).expand(-1, -1, 4))
    if selection_order == "top_k_first":
        candidate_scores = candidate_scores.masked_fill(too_small.gather(1, candidate_indices), float("-inf"))
    candidate_images = torch.arange(num_images, device=device).unsqueeze(1).expand_as(candidate_indices)

    alive = torch.isfinite(candidate_scores)  # drops the filtered-out boxes (and NaN scores)
    flat_scores = candidate_scores[alive]
    flat_boxes = candidate_boxes[alive]
    flat_images = candidate_images[alive]
    flat_indices = candidate_indices[alive]
    keep = batched_nms(flat_boxes, flat_scores, flat_images, iou_threshold)  # sorted by score

    kept_images = flat_images[keep]
    results = []
    for image in range(num_images):
        chosen = keep[kept_images == image][:top_k]
        location = flat_indices[chosen]
        results.append(
            GeneralInstances(
                indices=location,
                boxes=flat_boxes[chosen],
                scores=flat_scores[chosen],
                from_teacher=from_teacher[image, location],
            )
        )
    return results


# The selection's options and their defaults, shared by the GID term and the notebooks' drawing of
# general instances (docs/methods.md §3.1: NMS IoU 0.3, top 10 per image, the paper's score).
SELECTION_OPTIONS: dict[str, Any] = {
    "iou_threshold": 0.3,
    "top_k": 10,
    "score_mode": "max_abs_diff",
    "min_box_size": 1.0,
    "pre_nms_top_k": 3000,
    "selection_order": "filter_first",
    "fcos_centerness": False,
}


def clip_to_images(boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
    """``(N, R, 4)`` boxes, image ``i``'s clipped to its own valid ``image_sizes[i] = (h, w)``.

    Padding is not image: a box clipped to the padded batch could reach into the padding, where
    there is nothing to distil.
    """
    if len(image_sizes) != boxes.shape[0]:
        raise ValueError(f"clip_to_images: {len(image_sizes)} image sizes for a batch of {boxes.shape[0]}")
    limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits.unsqueeze(1))


def select_from_outputs(
    teacher: DenseOutputs,
    student: DenseOutputs,
    image_sizes: list[tuple[int, int]],
    *,
    iou_threshold: float,
    top_k: int,
    score_mode: str,
    min_box_size: float,
    pre_nms_top_k: int | None,
    selection_order: str = "filter_first",
) -> list[GeneralInstances]:
    """The general instances of a batch from both detectors' decoded outputs.

    Boxes are clipped to each image's own valid ``image_sizes[i] = (h, w)`` before selection (as
    the public reproduction does; padding is not image).
    """
    return select_general_instances(
        teacher.scores,
        student.scores,
        clip_to_images(teacher.boxes, image_sizes),
        clip_to_images(student.boxes, image_sizes),
        iou_threshold=iou_threshold,
        top_k=top_k,
        score_mode=score_mode,
        min_box_size=min_box_size,
        pre_nms_top_k=pre_nms_top_k,
        selection_order=selection_order,
    )
