"""Run a detector over a data loader and collect COCO-format results."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from msadkit.engine.evaluation import detections_to_coco

__all__ = ["autocast_context", "predict_coco_results"]


def autocast_context(device: torch.device, precision: str) -> Any:
    """The autocast context matching a Lightning precision string."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


@torch.no_grad()
def predict_coco_results(
    model: nn.Module,
    loader: DataLoader,
    category_ids: list[int],
    *,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    channels_last: bool = False,
) -> list[dict[str, Any]]:
    """Detections of ``model`` on every image of ``loader`` in COCO result format.

    Boxes are mapped back to the original image pixels with each target's resize ``scale``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for batch in loader:
            batch = batch.to(device)
            images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images
            with autocast_context(device, precision):
                detections = model(images, batch.image_sizes)
            results.extend(
                detections_to_coco(
                    [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()} for d in detections],
                    [int(t["image_id"]) for t in batch.targets],
                    [float(t["scale"]) for t in batch.targets],
                    category_ids,
                )
            )
    finally:
        model.train(was_training)
    return results
