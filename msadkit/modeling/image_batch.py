"""The one check of an image batch that backbones and detectors run before any convolution."""

from __future__ import annotations

import torch
from torch import Tensor

from msadkit.errors import InputError

__all__ = ["check_image_batch"]


def check_image_batch(images: Tensor, owner: str = "images", *, require_finite: bool = False) -> None:
    """Raise :class:`InputError` unless ``images`` is a float ``(N, 3, H, W)`` tensor.

    Args:
        images: the batch.
        owner: who checks, named in the message.
        require_finite: also reject inf/NaN pixels (naming the batch indices); detectors do, at the
            cost of one pass over the batch, so that a bad image fails before the losses turn NaN.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"{owner}: expected an image batch of shape (N, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise InputError(f"{owner}: expected a floating-point image batch, got dtype {images.dtype}")
    if require_finite and not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise InputError(f"{owner}: images contain inf or NaN values (batch indices {bad})")
