"""Detection transforms: callables ``(image (3, H, W) uint8, target dict) -> (image, target)``.

Images stay raw ``uint8`` RGB through every transform and through batching; the model's
:class:`~msadkit.modeling.image_batch.PixelNormalizer` normalises them on the training device.
Transforms never modify the target they are given; they return a shallow copy with new tensors.
Randomness comes from Python's :mod:`random`, which the trainer seeds per data-loader worker.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from msadkit.errors import ConfigError, InputError

__all__ = [
    "Compose",
    "ResizeShortSide",
    "RandomHorizontalFlip",
    "build_transforms",
]

Target = dict[str, Any]


def _check_image(image: Tensor, who: str) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputError(f"{who}: expected an image of shape (3, H, W), got {tuple(image.shape)}")


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ResizeShortSide:
    """Resize so the short side has a given length, keeping the aspect ratio.

    The factor is ``s = short / min(h, w)``, lowered to ``max_size / max(h, w)`` when the long side
    would exceed ``max_size``. The new size is ``(round(h * s), round(w * s))``; boxes are multiplied
    by the same ``s`` and ``target["scale"]`` is multiplied by ``s``, so dividing by
    ``target["scale"]`` maps boxes back to the original image exactly. Interpolation is bilinear
    with ``align_corners=False`` and no antialiasing (also when shrinking). A uint8 image stays
    uint8: torch's uint8 kernel rounds each output pixel, within one grey level of the float
    result, and runs about 3x faster than converting to float first.

    Args:
        short_sides: candidate short-side lengths; one is drawn at random per image when ``random``
            (multi-scale training), otherwise ``short_sides[0]`` is used.
        max_size: upper bound of the long side.
        random: draw the short side at random.
    """

    def __init__(self, short_sides: Sequence[int], max_size: int, *, random: bool = True) -> None:
        sides = [short_sides] if isinstance(short_sides, int) else list(short_sides)
        if not sides or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
            raise ConfigError(f"ResizeShortSide: short_sides must be positive integers, got {short_sides!r}")
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size <= 0:
            raise ConfigError(f"ResizeShortSide: max_size must be a positive integer, got {max_size!r}")
        self.short_sides = tuple(sides)
        self.max_size = max_size
        self.random = random

    def scale_for(self, height: int, width: int, short_side: int) -> float:
        """The resize factor for an image of ``height x width`` and the chosen ``short_side``."""
        scale = short_side / min(height, width)
        if max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return scale

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        _check_image(image, "ResizeShortSide")
        height, width = image.shape[-2:]
        short = random.choice(self.short_sides) if self.random else self.short_sides[0]
        scale = self.scale_for(height, width, short)
        new_h = max(1, int(round(height * scale)))
        new_w = max(1, int(round(width * scale)))
        if (new_h, new_w) != (height, width):
            image = F.interpolate(
                image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False
            )[0]
        target = dict(target)
        target["boxes"] = target["boxes"] * scale
        target["scale"] = float(target.get("scale", 1.0)) * scale
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortSide(short_sides={self.short_sides}, max_size={self.max_size}, random={self.random})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``prob``; boxes become ``(W - x2, y1, W - x1, y2)``."""

    def __init__(self, prob: float = 0.5) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"RandomHorizontalFlip: prob must lie in [0, 1], got {prob!r}")
        self.prob = prob

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        _check_image(image, "RandomHorizontalFlip")
        if self.prob <= 0.0 or random.random() >= self.prob:
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        boxes = target["boxes"]
        target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


def build_transforms(
    *,
    train: bool,
    short_sides: Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
) -> Compose:
    """The standard pipeline: resize and, while training, a random flip (normalising is the model's).

    Args:
        train: training pipeline (random short side, random flip) or evaluation pipeline
            (``short_sides[0]``, no flip).
        short_sides: short-side lengths, e.g. ``(640, 672, ..., 800)`` for training, ``(800,)`` for test.
        max_size: upper bound of the long side.
        flip_prob: probability of a horizontal flip while training.
    """
    steps: list[Any] = [ResizeShortSide(short_sides, max_size, random=train)]
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    return Compose(steps)
