"""Collating detection samples into a padded image batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from msadkit.errors import InputError

__all__ = ["DetectionBatch", "collate_detection", "DetectionCollator"]


def _move(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    return value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value


@dataclass
class DetectionBatch:
    """A batch of images padded to a common size, with their targets.

    Attributes:
        images: ``(N, 3, H, W)`` raw uint8 RGB from the data pipeline, zero padded at the bottom and
            right; ``H`` and ``W`` are multiples of the size divisibility used when collating. The
            model's ``PixelNormalizer`` turns it into normalised floats on the training device.
        image_sizes: ``(height, width)`` of the valid region of each image.
        targets: one dict per image, as produced by the dataset and its transforms
            (``"boxes"`` ``(M, 4)``, ``"labels"`` ``(M,)``, ``"image_id"``, ``"orig_size"``, ``"scale"``).
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "DetectionBatch":
        """A copy with the images and every tensor in the targets on ``device``."""
        return DetectionBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            image_sizes=list(self.image_sizes),
            targets=[{k: _move(v, device, non_blocking) for k, v in t.items()} for t in self.targets],
        )

    def pin_memory(self) -> "DetectionBatch":
        """Pinned-memory copy; ``DataLoader(pin_memory=True)`` calls this on custom batch types."""
        return DetectionBatch(
            images=self.images.pin_memory(),
            image_sizes=list(self.image_sizes),
            targets=[{k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in t.items()} for t in self.targets],
        )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def collate_detection(
    samples: Sequence[tuple[Tensor, dict[str, Any]]], *, size_divisibility: int = 32
) -> DetectionBatch:
    """Stack ``(image, target)`` samples into a :class:`DetectionBatch`.

    Images are copied into the top-left corner of a zero tensor whose height and width are the
    largest in the batch rounded up to a multiple of ``size_divisibility``. The zeros of a uint8
    batch are black; ``PixelNormalizer`` resets the padding to 0 after normalising (the mean colour,
    as in detectron2, which pads after normalising).

    Args:
        samples: ``(image (3, Hi, Wi), target)`` pairs, all images of one dtype.
        size_divisibility: padded ``H`` and ``W`` are multiples of it (32 by default, 256 for MSAD).

    Returns:
        The batch; targets are passed through unchanged.
    """
    if size_divisibility < 1:
        raise InputError(f"collate_detection: size_divisibility must be >= 1, got {size_divisibility}")
    if len(samples) == 0:
        raise InputError("collate_detection: got an empty list of samples")
    images = [s[0] for s in samples]
    for k, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InputError(f"collate_detection: sample {k} image must be a (3, H, W) tensor, got {shape}")
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    height = _round_up(max(h for h, _ in sizes), size_divisibility)
    width = _round_up(max(w for _, w in sizes), size_divisibility)
    batch = images[0].new_zeros((len(images), 3, height, width))
    for k, (image, (h, w)) in enumerate(zip(images, sizes)):
        batch[k, :, :h, :w].copy_(image)
    return DetectionBatch(images=batch, image_sizes=sizes, targets=[s[1] for s in samples])


class DetectionCollator:
    """Picklable ``collate_fn`` for ``DataLoader`` workers: ``DetectionCollator(size_divisibility)``."""

    def __init__(self, size_divisibility: int = 32) -> None:
        if size_divisibility < 1:
            raise InputError(f"DetectionCollator: size_divisibility must be >= 1, got {size_divisibility}")
        self.size_divisibility = size_divisibility

    def __call__(self, samples: Sequence[tuple[Tensor, dict[str, Any]]]) -> DetectionBatch:
        return collate_detection(samples, size_divisibility=self.size_divisibility)

    def __repr__(self) -> str:
        return f"DetectionCollator(size_divisibility={self.size_divisibility})"
