"""FLOP counts and MSAD's "capacity" column.

Conventions:

- A multiply-accumulate (MAC) is one multiplication plus one addition. Counts are reported as
  GMACs (``1e9`` MACs) or GFLOPs, with **GFLOPs = 2 x GMACs** (the convention of
  :class:`torch.utils.flop_counter.FlopCounterMode`). Papers that say "FLOPs" for ResNets
  (the slimmable networks paper, MSAD, torchvision's ``_ops``) usually mean MACs: ResNet-50 at
  224x224 is "4.1 GFLOPs" there, 4.09 GMACs here, 8.18 GFLOPs here.
- Only convolutions and matrix products are counted (the ops :class:`FlopCounterMode` has
  formulas for); norms, activations, pooling and residual additions are not, as in those papers.
- Backbone counts are the **bottom-up** ResNet only (stem and res2..res5): no FPN, no global
  pooling, no ImageNet classifier. With the classifier left out the count of the slimmable
  ResNet-50 at 224x224 is exactly the published 4.087 / 2.321 / 1.051 / 0.278 GMACs at widths
  1.0 / 0.75 / 0.5 / 0.25; with the classifier (``int(2048 w) x 1000`` MACs) width 1.0 would be
  4.089.
- The backbone forward runs on the ``meta`` device: shapes propagate exactly (odd sizes such as
  800x1333 included) but no arithmetic is done, so an 800x1333 width-1.0 count takes a fraction
  of a second and no memory.

MSAD's capacity (METHODS §1.10) is the backbone count relative to the width-1.0 slimmable
ResNet-50 at 800x1333. The multi-scale teacher runs the backbone on the high-resolution image and
on its half-size copy, so its capacity is ``B(w, 800x1333) + B(w, 400x667)``; the low-resolution
student only pays the second term.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msadkit.errors import ConfigError
from msadkit.modeling.backbones.resnet import torchvision_resnet
from msadkit.modeling.backbones.slimmable import WIDTHS as _SLIMMABLE_WIDTHS
from msadkit.modeling.backbones.slimmable import slimmable_resnet50

__all__ = [
    "HIGH_RES",
    "LOW_RES",
    "CAPACITY_ROLES",
    "count_flops",
    "count_gmacs",
    "backbone_gmacs",
    "msad_capacity",
    "capacity_of",
]

HIGH_RES: tuple[int, int] = (800, 1333)
"""``(height, width)`` of the high-resolution reference input."""

LOW_RES: tuple[int, int] = (400, 667)
"""``(height, width)`` of the low-resolution input: half of :data:`HIGH_RES` per side, rounded up."""

CAPACITY_ROLES: tuple[str, ...] = ("teacher", "student", "high", "low")

_TORCHVISION_DEPTHS = (50, 101)


def count_flops(module: nn.Module, *inputs: object, **kwargs: object) -> float:
    """GFLOPs (``2 x`` GMACs) of one forward pass ``module(*inputs, **kwargs)``.

    The forward runs in eval mode (restored afterwards) under ``torch.no_grad()``, so BatchNorm
    statistics are not touched and no backward pass is counted. To count a large model without
    computing anything, build it under ``with torch.device("meta"):`` and pass meta tensors.

    Args:
        module: the model.
        *inputs: positional forward arguments, e.g. an image batch ``(N, 3, H, W)``.
        **kwargs: keyword forward arguments.

    Returns:
        Counted floating-point operations divided by ``1e9``, for the whole batch.
    """
    was_training = module.training
    module.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(*inputs, **kwargs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() / 1e9


def count_gmacs(module: nn.Module, *inputs: object, **kwargs: object) -> float:
    """GMACs of one forward pass: :func:`count_flops` divided by 2."""
    return count_flops(module, *inputs, **kwargs) / 2.0


def backbone_gmacs(
    width: float | None,
    depth: int = 50,
    height: int = HIGH_RES[0],
    width_px: int = HIGH_RES[1],
) -> float:
    """GMACs of the bottom-up ResNet (stem and res2..res5) for one ``(1, 3, height, width_px)`` image.

    Args:
        width: slimmable width multiplier (0.25, 0.5, 0.75 or 1.0) for
            :func:`msadkit.modeling.backbones.slimmable.slimmable_resnet50`, or ``None`` for the plain
            torchvision ResNet of ``depth`` (:func:`msadkit.modeling.backbones.resnet.torchvision_resnet`).
            Width 1.0 and the plain ResNet-50 give the same count.
        depth: 50, or 101 for the plain ResNet; slimmable widths exist for 50 only.
        height: input height in pixels.
        width_px: input width in pixels.

    Raises:
        ConfigError: an unknown width or depth, or a non-positive image size.
    """
    if width is not None:
        width = float(width)
        if width not in _SLIMMABLE_WIDTHS:
            raise ConfigError(
                f"backbone_gmacs: width must be one of {_SLIMMABLE_WIDTHS} or None, got {width!r}"
            )
        if depth != 50:
            raise ConfigError(f"backbone_gmacs: slimmable widths exist for depth 50 only, got depth={depth}")
    elif depth not in _TORCHVISION_DEPTHS:
        raise ConfigError(f"backbone_gmacs: depth must be one of {_TORCHVISION_DEPTHS}, got {depth!r}")
    if int(height) <= 0 or int(width_px) <= 0:
        raise ConfigError(f"backbone_gmacs: image size must be positive, got {height}x{width_px}")
    return _bottom_up_macs(width, depth, int(height), int(width_px)) / 1e9


@functools.lru_cache(maxsize=64)
def _bottom_up_macs(width: float | None, depth: int, height: int, width_px: int) -> int:
    with torch.device("meta"):
        if width is None:
            model: nn.Module = torchvision_resnet(depth, norm="BN")
        else:
            model = slimmable_resnet50(width, norm="BN")
        images = torch.empty(1, 3, height, width_px)
    return round(count_flops(model, images) * 1e9 / 2)


def msad_capacity(
    width: float | None,
    role: str,
    *,
    high_size: tuple[int, int] = HIGH_RES,
    low_size: tuple[int, int] = LOW_RES,
) -> float:
    """MSAD capacity: backbone MACs relative to the width-1.0 slimmable ResNet-50 at ``high_size``.

    Args:
        width: slimmable width (0.25, 0.5, 0.75, 1.0), or ``None`` for the plain ResNet-50 (the
            same count as width 1.0).
        role: ``"teacher"`` (backbone on the high- and the low-resolution input), ``"student"`` or
            ``"low"`` (low resolution only), ``"high"`` (high resolution only, a single-scale
            baseline).
        high_size: ``(height, width)`` of the high-resolution input, also the reference size.
        low_size: ``(height, width)`` of the low-resolution input.

    Returns:
        The ratio, e.g. 1.252 for the width-1.0 teacher and 0.017 for the width-0.25 student
        (MSAD's README rounds these to 1.25x and 0.02x).

    Raises:
        ConfigError: an unknown role or width.
    """
    if role not in CAPACITY_ROLES:
        raise ConfigError(f"msad_capacity: role must be one of {CAPACITY_ROLES}, got {role!r}")
    reference = backbone_gmacs(1.0, 50, *high_size)
    high = backbone_gmacs(width, 50, *high_size)
    low = backbone_gmacs(width, 50, *low_size)
    total = {"teacher": high + low, "student": low, "low": low, "high": high}[role]
    return total / reference


# Backbone name -> (slimmable width is meaningful, ResNet depth) for the capacity computation.
_COUNTABLE_BACKBONES = {"slimmable_resnet50": (True, 50), "resnet50": (False, 50), "resnet101": (False, 101)}


def capacity_of(backbone: str | None, width: float | None, resolution: str | None) -> float | None:
    """MSAD's capacity of a run, from the columns of its summary, or None if it cannot be counted.

    Args:
        backbone: ``model.backbone.name``.
        width: the slimmable width (None for a plain ResNet).
        resolution: ``"high"``, ``"low"`` or ``"high+low"`` (an MSAD teacher).

    Returns:
        Backbone MACs at 800x1333 (high) and/or 400x667 (low) relative to the width-1.0 ResNet-50 at
        800x1333, or None for a backbone the counter does not know or a width it does not offer.
    """
    if backbone not in _COUNTABLE_BACKBONES or resolution is None:
        return None
    slimmable, depth = _COUNTABLE_BACKBONES[backbone]
    if slimmable and width not in _SLIMMABLE_WIDTHS:
        return None
    parts = resolution.split("+")
    if any(part not in ("high", "low") for part in parts):
        return None
    sizes = {"high": HIGH_RES, "low": LOW_RES}
    total = sum(backbone_gmacs(width if slimmable else None, depth, *sizes[part]) for part in parts)
    return total / backbone_gmacs(1.0, 50, *HIGH_RES)
