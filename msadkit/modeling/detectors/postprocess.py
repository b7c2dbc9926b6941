"""The tail that FCOS and RetinaNet post-processing share: clip, drop empty boxes, class-wise NMS."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["select_detections", "select_detections_nms_first", "top_candidates", "clip_boxes", "inside_image"]


def top_candidates(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of ``(R,)`` candidate scores (all of them when ``R <= k``) and their indices.

    Traced for export (``msadkit export``), the count ``R`` is not known while tracing, so the
    graph sorts and keeps the first ``k`` (slicing past the end keeps all); eagerly the top-k runs
    only when there are more than ``k``. Both keep the same candidates.
    """
    if torch.jit.is_tracing():
        scores, order = scores.sort(descending=True)
        return scores[:k], order[:k]
    if scores.numel() > k:
        return scores.topk(k)
    return scores, torch.arange(scores.numel(), device=scores.device)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int] | tuple[Tensor, Tensor]) -> Tensor:
    """``(R, 4)`` boxes clipped to ``[0, w] x [0, h]``; ``image_size`` ``(h, w)`` may be 0-dim tensors,
    so that an exported graph clips to the size of the image it is given."""
    height, width = image_size
    limits = torch.stack([torch.as_tensor(width), torch.as_tensor(height)]).to(boxes).repeat(2)
    return torch.minimum(boxes.clamp(min=0), limits)


def inside_image(
    boxes: Tensor, scores: Tensor, labels: Tensor, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidates with their ``(R, 4)`` boxes clipped to the image's valid ``(h, w)`` (padding is not
    image), those whose box clipping left empty dropped, with their ``(R,)`` scores and labels."""
    boxes = clip_boxes(boxes, image_size)
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[non_empty], scores[non_empty], labels[non_empty]


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_size: tuple[int, int],
    *,
    nms_thresh: float,
    detections_per_image: int,
    clip_before_nms: bool = True,
) -> dict[str, Tensor]:
    """The detections of one image from its decoded candidates.

    By default (msadkit's order) boxes are clipped to the image's valid ``(h, w)``, boxes left empty
    by clipping are dropped, and class-wise NMS keeps the ``detections_per_image`` best.

    ``clip_before_nms=False`` is the MSAD/AdelaiDet order (``model.fcos.clip_before_nms: false``):
    class-wise NMS on the unclipped boxes; every detection scoring at least the
    ``detections_per_image``-th best score is kept (ties can keep more, the code's ``kthvalue``);
    then boxes are clipped to the image and the empty ones dropped, which can leave fewer.

    Args:
        boxes: ``(R, 4)`` candidate boxes ``(x1, y1, x2, y2)`` in input pixels.
        scores: ``(R,)`` candidate scores.
        labels: ``(R,)`` int64 class indices.
        image_size: valid ``(h, w)`` of the image.

    Returns:
        ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` by decreasing score.
    """
    if clip_before_nms:
        boxes, scores, labels = inside_image(boxes, scores, labels, image_size)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    keep = batched_nms(boxes, scores, labels, nms_thresh)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if torch.jit.is_tracing() and detections_per_image > 0:
        # Traced for export the count is unknown: the last of the best ``detections_per_image``
        # scores (the lowest one when there are fewer) is the same threshold.
        kept = scores >= scores.sort(descending=True).values[:detections_per_image][-1:]
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    elif 0 < detections_per_image < scores.numel():
        threshold = scores.kthvalue(scores.numel() - detections_per_image + 1).values
        kept = scores >= threshold
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    boxes, scores, labels = inside_image(boxes, scores, labels, image_size)
    return {"boxes": boxes, "scores": scores, "labels": labels}


# The MSAD/AdelaiDet order under its own name: what ``FCOS(clip_before_nms=False)`` selects with.
select_detections_nms_first = partial(select_detections, clip_before_nms=False)
