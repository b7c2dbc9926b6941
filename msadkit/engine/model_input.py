"""A loader's raw batch -> the model's input on the device where the model runs."""

from __future__ import annotations

import torch

from msadkit.data.batching import DetectionBatch
from msadkit.modeling.image_batch import PixelNormalizer

__all__ = ["to_model_input"]


def to_model_input(
    batch: DetectionBatch,
    pixels: PixelNormalizer,
    device: torch.device | str,
    *,
    channels_last: bool = False,
    non_blocking: bool = False,
) -> DetectionBatch:
    """Move a uint8 batch to ``device`` and normalise it there.

    Only the uint8 pixels cross to the device (a quarter of float32's bytes); ``pixels`` is moved
    to ``device`` too if it is elsewhere.

    Args:
        batch: collated batch, ``images`` ``(N, 3, H, W)`` uint8.
        pixels: the model's pixel convention.
        device: where the model runs.
        channels_last: hand the images over in channels-last memory format.
        non_blocking: asynchronous copy (from pinned memory).

    Returns:
        The batch with ``images`` ``(N, 3, H, W)`` float32 normalised (padding 0) on ``device``.
    """
    moved = batch.to(device, non_blocking=non_blocking)
    pixels.to(moved.images.device)
    images = pixels(moved.images, moved.image_sizes)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return DetectionBatch(images=images, image_sizes=moved.image_sizes, targets=moved.targets)
