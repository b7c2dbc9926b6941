"""The image batch a model sees: the raw-pixel normalisation and the one check before any convolution.

Data loaders hand over ``uint8`` RGB batches (a quarter of the bytes of float32 through the
worker queues and to the device); :class:`PixelNormalizer` turns them into the model's float
input on the training device, as detectron2's ``preprocess_image`` does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from msadkit.data.batching import DetectionBatch
from msadkit.errors import ConfigError, InputError

__all__ = ["PIXEL_FORMATS", "PixelNormalizer", "check_image_batch", "pixel_normalizer", "to_model_input"]

# rgb: torchvision/ImageNet convention; bgr: detectron2's (and the original MSAD code's) input format.
PIXEL_FORMATS = ("rgb", "bgr")


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
        hint = " (a raw uint8 batch from a data loader goes through PixelNormalizer first)" if images.dtype == torch.uint8 else ""
        raise InputError(f"{owner}: expected a floating-point image batch, got dtype {images.dtype}{hint}")
    if require_finite and not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise InputError(f"{owner}: images contain inf or NaN values (batch indices {bad})")


class PixelNormalizer(nn.Module):
    """Raw ``uint8`` RGB pixels -> the model's normalised float input, on the batch's device.

    ``bgr`` reverses the channels first; then ``(x - mean) / std`` per channel, with ``mean`` and
    ``std`` given in the model's channel order (for ``bgr`` detectron2's ``103.53, 116.28,
    123.675`` / ``1, 1, 1``). The padding that collation added (uint8 zeros, bottom and right of
    each ``image_sizes`` entry) is set to 0 after normalising: the mean colour, exactly what
    padding a normalised batch with zeros gave before the data path became uint8.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but never enter a
    checkpoint, so weights files are the same whatever the pixel convention.

    Args:
        mean: per-channel mean in 0..255, model channel order.
        std: per-channel standard deviation in 0..255 (positive), model channel order.
        pixel_format: ``"rgb"`` or ``"bgr"``, the channel order the model expects.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], pixel_format: str = "rgb") -> None:
        super().__init__()
        if pixel_format not in PIXEL_FORMATS:
            raise ConfigError(f"model.pixel_format must be one of {list(PIXEL_FORMATS)}, got {pixel_format!r}")
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ConfigError(
                f"model.pixel_mean and model.pixel_std need 3 values each (std positive), got {list(mean)}, {list(std)}"
            )
        self.pixel_format = pixel_format
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """``(N, 3, H, W)`` uint8 RGB -> ``(N, 3, H, W)`` float32 normalised, padding at 0.

        Args:
            images: the padded raw batch.
            image_sizes: valid ``(h, w)`` of each image; None means no padding.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise InputError(f"PixelNormalizer: expected a (N, 3, H, W) batch, got {shape}")
        if images.dtype != torch.uint8:
            raise InputError(f"PixelNormalizer: expected raw uint8 pixels, got dtype {images.dtype}")
        pixels = images.float()
        if self.pixel_format == "bgr":
            pixels = pixels.flip(1)
        normalized = (pixels - self.mean) / self.std
        if image_sizes is not None:
            if len(image_sizes) != images.shape[0]:
                raise InputError(f"PixelNormalizer: {len(image_sizes)} image sizes for {images.shape[0]} images")
            for k, (height, width) in enumerate(image_sizes):
                normalized[k, :, height:, :] = 0.0
                normalized[k, :, :height, width:] = 0.0
        return normalized

    def inverse(self, images: Tensor) -> Tensor:
        """Float RGB in 0..255 from a normalised ``(N, 3, H, W)`` or ``(3, H, W)`` batch (for display)."""
        mean, std = (self.mean, self.std) if images.dim() == 4 else (self.mean[0], self.std[0])
        pixels = images.float() * std.to(images.device) + mean.to(images.device)
        return pixels.flip(-3) if self.pixel_format == "bgr" else pixels

    def extra_repr(self) -> str:
        return f"pixel_format={self.pixel_format!r}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def pixel_normalizer(config: dict[str, Any]) -> PixelNormalizer:
    """The :class:`PixelNormalizer` of a config's ``model.pixel_format``, ``pixel_mean`` and ``pixel_std``."""
    model = config["model"]
    return PixelNormalizer(model["pixel_mean"], model["pixel_std"], model["pixel_format"])


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
