"""FLOPs of a configured model at its configured input size (``msadkit flops``)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from msadkit.modeling.backbones.capacity import capacity_of, count_gmacs
from msadkit.modeling.detectors.dense_detector import DenseDetector, downsample_nearest
from msadkit.utils.run_folder import summary_fields

__all__ = ["config_flops", "dense_detector_flops_forward"]


def dense_detector_flops_forward(model: DenseDetector, images: Tensor) -> tuple[Tensor, ...]:
    """The tensor work of a dense detector's forward (no input checks, no post-processing).

    Post-processing is data dependent (thresholds, NMS) and cannot run on the meta device; its
    cost is negligible next to the convolutions.
    """
    if model.input_downsample != 1:
        images = downsample_nearest(images, model.input_downsample)
    levels = model.select_levels(model.backbone(images))
    predictions = model.head(levels)
    return tuple(t for outputs in predictions.values() for t in outputs)


class _Forward(nn.Module):
    """Adapter so :func:`count_gmacs` can call a model's flops-forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Any:
        custom = getattr(self.model, "flops_forward", None)
        if callable(custom):
            return custom(images)
        return dense_detector_flops_forward(self.model, images)


def _bottom_up_gmacs(model: nn.Module, images: Tensor) -> float:
    """GMACs of every bottom-up ResNet pass the model makes (high and low for an MSAD teacher)."""
    passes = getattr(model, "bottom_up_inputs", None)
    inputs = passes(images) if callable(passes) else [
        downsample_nearest(images, model.input_downsample) if model.input_downsample != 1 else images
    ]
    return sum(count_gmacs(model.backbone.bottom_up, x) for x in inputs)


def config_flops(config: dict[str, Any], *, height: int | None = None, width: int | None = None) -> dict[str, Any]:
    """Backbone (bottom-up) and whole-model GFLOPs for one image, and MSAD capacity.

    The model is built on the meta device (nothing is computed or loaded). The input defaults to
    ``data.test_short_side`` x ``data.test_max_size`` padded to ``data.size_divisibility``.

    Returns:
        ``{"input": [H, W], "backbone_gflops", "total_gflops", "capacity"}``; GFLOPs are 2 x GMACs;
        capacity (MSAD's definition: bottom-up FLOPs relative to the width-1.0 slimmable R-50 at
        800x1333, high + low input for a teacher) is None for non-slimmable backbones.
    """
    from msadkit.modeling.registry import build_model

    config = copy.deepcopy(config)
    config["model"]["backbone"]["weights"] = None
    config["distill"]["teacher"] = None
    data = config["data"]
    divisor = data["size_divisibility"]
    h = height or data["test_short_side"]
    w = width or data["test_max_size"]
    h, w = (math.ceil(v / divisor) * divisor for v in (h, w))
    with torch.device("meta"):
        model = build_model(config)
        images = torch.zeros(1, 3, h, w)
    model.eval()
    total = count_gmacs(_Forward(model), images)
    bottom_up = _bottom_up_gmacs(model, images)
    fields = summary_fields(config)
    capacity = None
    if fields["backbone"] == "slimmable_resnet50":
        capacity = round(capacity_of(fields["backbone"], fields["width"], fields["resolution"]), 3)
    return {
        "config_arch": config["model"]["arch"],
        "input": [h, w],
        "backbone_gflops": round(2 * bottom_up, 3),
        "total_gflops": round(2 * total, 3),
        "capacity": capacity,
    }
