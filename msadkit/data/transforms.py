"""Detection transforms: callables ``(image (3, H, W) float, target dict) -> (image, target)``.

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
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "ResizeShortSide",
    "RandomHorizontalFlip",
    "Normalize",
    "build_transforms",
]

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

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
    with ``align_corners=False`` and no antialiasing (also when shrinking).

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


class Normalize:
    """``(image - mean) / std`` per RGB channel, for images in 0..255; targets pass through."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"Normalize: mean and std need 3 values (RGB), got mean={mean!r}, std={std!r}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"Normalize: std must be positive, got {std!r}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _stats(self, image: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return mean, std

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        _check_image(image, "Normalize")
        mean, std = self._stats(image)
        return (image - mean) / std, target

    def inverse(self, image: Tensor) -> Tensor:
        """Undo the normalisation of a ``(3, H, W)`` or ``(N, 3, H, W)`` image (for display)."""
        mean, std = self._stats(image)
        return image * std + mean

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def build_transforms(
    *,
    train: bool,
    short_sides: Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """The standard pipeline: resize, (training only) random flip, normalise.

    Args:
        train: training pipeline (random short side, random flip) or evaluation pipeline
            (``short_sides[0]``, no flip).
        short_sides: short-side lengths, e.g. ``(640, 672, ..., 800)`` for training, ``(800,)`` for test.
        max_size: upper bound of the long side.
        flip_prob: probability of a horizontal flip while training.
        mean: per-channel RGB mean in 0..255.
        std: per-channel RGB standard deviation in 0..255.
    """
    steps: list[Any] = [ResizeShortSide(short_sides, max_size, random=train)]
    if train and flip_prob > 0:
        steps.append(RandomHorizontalFlip(flip_prob))
    steps.append(Normalize(mean, std))
    return Compose(steps)
