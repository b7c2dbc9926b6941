"""The tail that FCOS and RetinaNet post-processing share: clip, drop empty boxes, class-wise NMS."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

__all__ = ["select_detections"]


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_size: tuple[int, int],
    *,
    nms_thresh: float,
    detections_per_image: int,
) -> dict[str, Tensor]:
    """The detections of one image from its decoded candidates.

    Boxes are clipped to the image's valid ``(h, w)`` (padding is not image), boxes left empty by
    clipping are dropped, and class-wise NMS keeps the ``detections_per_image`` best.

    Args:
        boxes: ``(R, 4)`` candidate boxes ``(x1, y1, x2, y2)`` in input pixels.
        scores: ``(R,)`` candidate scores.
        labels: ``(R,)`` int64 class indices.
        image_size: valid ``(h, w)`` of the image.

    Returns:
        ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` by decreasing score.
    """
    boxes = clip_boxes_to_image(boxes, image_size)
    non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels = boxes[non_empty], scores[non_empty], labels[non_empty]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_image]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
