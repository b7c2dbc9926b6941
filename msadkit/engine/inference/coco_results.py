"""Detections in the resized input's pixels -> COCO result entries in the original image's pixels."""

from __future__ import annotations

import math

import torch

from msadkit.errors import InputError

__all__ = ["detections_to_coco"]


def detections_to_coco(
    detections: list[dict],
    image_ids: list[int],
    scales: list[float],
    category_ids: list[int],
) -> list[dict]:
    """Convert per-image detections into COCO result entries in original-image pixels.

    Args:
        detections: one dict per image with ``"boxes"`` ``(D, 4)`` absolute ``(x1, y1, x2, y2)`` in
            the pixels of the resized input, ``"scores"`` ``(D,)`` and ``"labels"`` ``(D,)``
            contiguous class indices in ``[0, len(category_ids))``.
        image_ids: the COCO ``image_id`` of each image, same length as ``detections``.
        scales: the resize factor of each image (resized size / original size, the dataset's
            ``target["scale"]``); boxes are divided by it.
        category_ids: the COCO category id of each contiguous class index (``category_ids[label]``).

    Returns:
        A list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts with plain
        Python numbers, ready for :func:`coco_evaluate` or ``json.dump``.

    Raises:
        InputError: lengths that disagree, a non-positive scale, a missing key, a label outside the
            category list or boxes of the wrong shape.
    """
    if not (len(detections) == len(image_ids) == len(scales)):
        raise InputError(
            f"detections_to_coco: detections ({len(detections)}), image_ids ({len(image_ids)}) and "
            f"scales ({len(scales)}) must have the same length"
        )
    num_classes = len(category_ids)
    results: list[dict] = []
    for index, (det, image_id, scale) in enumerate(zip(detections, image_ids, scales)):
        missing = [key for key in ("boxes", "scores", "labels") if key not in det]
        if missing:
            raise InputError(f"detections_to_coco: detections[{index}] lacks key(s) {missing}")
        scale = float(scale)
        if not scale > 0 or not math.isfinite(scale):
            raise InputError(f"detections_to_coco: scales[{index}] is {scale}, expected a positive number")
        boxes = torch.as_tensor(det["boxes"]).detach().to("cpu", torch.float64)
        scores = torch.as_tensor(det["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(det["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not (len(boxes) == len(scores) == len(labels)):
            raise InputError(
                f"detections_to_coco: detections[{index}] has boxes {tuple(boxes.shape)}, scores "
                f"{tuple(scores.shape)}, labels {tuple(labels.shape)}; expected (D, 4), (D,), (D,)"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise InputError(
                f"detections_to_coco: detections[{index}] has labels in [{int(labels.min())}, "
                f"{int(labels.max())}] but category_ids has {num_classes} entries"
            )
        boxes = boxes / scale
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist()):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results
