"""Which FPN levels a detector uses at each input resolution (docs/methods.md §1.2, §1.3)."""

from __future__ import annotations

from typing import Any

from msadkit.errors import ConfigError

__all__ = ["HIGH_RES_FEATURES", "LOW_RES_FEATURES", "HIGH_RES_STRIDES", "resolution_levels"]

HIGH_RES_FEATURES = ("p3", "p4", "p5", "p6", "p7")
# A low-resolution detector sees the 0.5x image and uses p2..p6, which are aligned with the
# high-resolution p3..p7 and assigned with their strides and ground truth (docs/methods.md §1.2).
LOW_RES_FEATURES = ("p2", "p3", "p4", "p5", "p6")
HIGH_RES_STRIDES = (8, 16, 32, 64, 128)


def resolution_levels(model_cfg: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    """FPN levels and input downsampling factor for ``model.resolution`` (high or low)."""
    resolution = model_cfg["resolution"]
    if resolution == "high":
        return HIGH_RES_FEATURES, 1
    if resolution == "low":
        return LOW_RES_FEATURES, 2
    raise ConfigError(f"model.resolution must be 'high' or 'low', got {resolution!r}")
