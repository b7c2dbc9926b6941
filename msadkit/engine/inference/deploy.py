"""The deployable detector: one module from raw RGB pixels to boxes, for ``msadkit export``.

:class:`DeployableDetector` holds everything the test pipeline does outside the model — the
short-side resize of ``data.test_short_side`` / ``data.test_max_size``, the pixel normalisation,
zero padding to ``data.size_divisibility`` — and the model's own inference (a low-resolution
student's 0.5x nearest copy, the dense head, decoding, class-wise NMS), then maps the boxes back to
input pixels. It gives what ``msadkit predict`` gives on the same image, and traces into one graph
whose height and width stay free (:mod:`msadkit.engine.inference.export`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from msadkit.errors import InputError
from msadkit.modeling.image_batch import pixel_normalizer

__all__ = ["resize_like_uint8", "DeployableDetector"]


def _round_up(value: Tensor, multiple: int) -> Tensor:
    return torch.div(value + multiple - 1, multiple, rounding_mode="floor") * multiple


def _bilinear_taps(in_size: Tensor, out_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed-point taps of torch's CPU uint8 bilinear resize (``antialias=False``) along one axis.

    Output ``j`` mixes inputs ``i0`` and ``min(i0 + 1, in - 1)`` with integer weights ``q0, q1``
    summing to about ``2**precision``, the arithmetic of torch's uint8 kernel: triangle weights
    around ``center = (j + 0.5) * in / out``, normalised, then rounded to ``precision`` bits, the
    largest that keeps the biggest weight within int16.

    Args:
        in_size, out_size: 0-dim int64 sizes (tensors, so a traced graph keeps them free).

    Returns:
        ``(i0 (out,) int64, i1 (out,) int64, quantized (2, out) float64 = (q0, q1), precision (1,)
        float64)``.
    """
    # One-element tensors: the ONNX exporter divides two 0-dim float64 tensors in float32.
    scale = in_size.reshape(1).to(torch.float64) / out_size.reshape(1).to(torch.float64)
    center = scale * (torch.arange(out_size, dtype=torch.float64) + 0.5)
    first = torch.floor(center - 0.5).clamp(min=0)
    stop = torch.floor(center + 1.5).clamp(max=in_size.to(torch.float64))
    taps = torch.stack([first, first + 1])
    weights = torch.where(taps < stop, (1 - (taps - center + 0.5).abs()).clamp(min=0), torch.zeros_like(taps))
    weights = weights / weights.sum(dim=0, keepdim=True)
    bits = torch.arange(22, dtype=torch.float64)
    # torch's choice: the first precision whose next step would overflow int16 (22 at most).
    overflow = torch.floor(0.5 + weights.max() * torch.pow(2.0, bits + 1)) >= 2**15
    precision = 22 - overflow.to(torch.float64).sum(dim=0, keepdim=True)
    quantized = torch.floor(weights * torch.pow(2.0, precision) + 0.5)
    i0 = first.to(torch.int64)
    return i0, torch.minimum(i0 + 1, in_size - 1), quantized, precision


def _resize_axis(pixels: Tensor, out_size: Tensor, dim: int) -> Tensor:
    """One pass of the uint8 bilinear resize on float64 pixel values along ``dim``, rounded to 0..255."""
    shape = torch._shape_as_tensor(pixels)
    i0, i1, quantized, precision = _bilinear_taps(shape[dim], out_size)
    view = [1, 1, 1, 1]
    view[dim] = -1
    total = pixels.index_select(dim, i0) * quantized[0].view(view) + pixels.index_select(dim, i1) * quantized[1].view(
        view
    )
    scale = torch.pow(2.0, precision)
    return torch.floor((total + scale / 2) / scale).clamp(0, 255)


def resize_like_uint8(pixels: Tensor, size: Tensor) -> Tensor:
    """``(1, 3, H, W)`` 0..255 integer-valued pixels resized to ``size`` ``(h, w)`` exactly as torch's
    CPU kernel resizes a uint8 image (horizontal pass, then vertical, each rounded), as float64.

    The data pipeline resizes decoded uint8 images with that kernel; spelling it out in tensor
    operations gives ONNX Runtime the same pixels (its own uint8 resize rounds differently), and an
    unchanged axis is an exact copy.
    """
    return _resize_axis(_resize_axis(pixels.to(torch.float64), size[1], 3), size[0], 2)


class DeployableDetector(nn.Module):
    """A trained detector with its test-time pre- and post-processing, for one image.

    Args:
        model: the run's detector in eval mode (FCOS, RetinaNet, a low-resolution student, or an MSAD
            teacher whose ``eval_branch`` is the branch to deploy).
        config: the run's config (test sizes, normalisation, size divisibility).

    ``forward(image)`` takes ``(1, 3, H, W)`` float32 RGB in 0..255 of any ``H, W`` and returns
    ``boxes (D, 4)`` float32 ``(x1, y1, x2, y2)`` in input pixels, ``scores (D,)`` float32 and
    ``labels (D,)`` int64 contiguous class indices, by decreasing score.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        data = config["data"]
        pixels = pixel_normalizer(config)
        self.model = model.eval()
        self.short_side = float(data["test_short_side"])
        self.max_size = float(data["test_max_size"])
        self.size_divisibility = int(data["size_divisibility"])
        self.reverse_channels = pixels.pixel_format == "bgr"
        self.register_buffer("pixel_mean", pixels.mean.clone(), persistent=False)
        self.register_buffer("pixel_std", pixels.std.clone(), persistent=False)

    def resized_size(self, height_width: Tensor) -> tuple[Tensor, Tensor]:
        """``(new (2,) int64, scale (1,) float64)`` for an image of ``(h, w)``, as ResizeShortSide rounds.

        Computed in float64 on tensors so that a traced graph keeps H and W free and rounds exactly
        like the Python arithmetic of the data pipeline (round half to even, both).
        """
        # One-element tensors, not 0-dim ones: the ONNX exporter computes a division of two 0-dim
        # float64 tensors in float32.
        size = height_width.to(torch.float64)
        short, long = size.amin(dim=0, keepdim=True), size.amax(dim=0, keepdim=True)
        scale = torch.full_like(short, self.short_side) / short
        scale = torch.where(long * scale > self.max_size, torch.full_like(long, self.max_size) / long, scale)
        return torch.round(size * scale).clamp(min=1).to(torch.int64), scale

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(batch (1, 3, H', W'), valid (2,) int64 (h, w), scale (1,) float64)`` of a 0..255 image.

        Pixels are rounded to whole grey levels and resized with the arithmetic of torch's uint8
        kernel (:func:`resize_like_uint8`), as the data pipeline resizes a decoded image, so that
        ``msadkit predict`` and the exported graph see the same pixels.
        """
        new_size, scale = self.resized_size(torch._shape_as_tensor(image)[-2:])
        resized = resize_like_uint8(image.round().clamp(0, 255), new_size).float()
        if self.reverse_channels:
            resized = resized.flip(1)
        normalized = (resized - self.pixel_mean) / self.pixel_std
        # Zero padding after normalisation (the mean colour), bottom and right, as for a batch.
        pad = _round_up(new_size, self.size_divisibility) - new_size
        return F.pad(normalized, (0, pad[1], 0, pad[0])), new_size, scale

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(boxes (D, 4), scores (D,), labels (D,))`` of one ``(1, 3, H, W)`` 0..255 RGB image."""
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise InputError(f"DeployableDetector: expected one RGB image (1, 3, H, W), got {tuple(image.shape)}")
        batch, valid, scale = self.preprocess(image.float())
        (detections,) = self.model(batch, [(valid[0], valid[1])])
        boxes = (detections["boxes"].to(torch.float64) / scale).to(torch.float32)
        return boxes, detections["scores"].float(), detections["labels"]
