"""Finished run folders of untrained tiny detectors for the predict and export tests.

The classification layer's weights are scaled up (and its bias raised from the prior) so that
scores spread over (0, 1) instead of clustering at the prior: detections are decisive (no
near-ties) and comparisons meaningful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msadkit.config import dump_config, load_config
from msadkit.data.build import resolve_data_paths
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic
from tests.conftest import tiny_training_overrides

# (packaged config, extra overrides) per kind of deployable model.
RUN_KINDS = {
    "fcos": ("fcos_demo", []),
    "retinanet": ("retinanet_demo", ["model.arch=retinanet"]),
    "low_res_student": ("msad/fcos_low_demo", []),
    "msad_teacher": ("msad/msad_teacher_demo", ["data.size_divisibility=256"]),
}


def make_run(folder: Path, kind: str = "fcos", extra: list[str] = ()) -> tuple[Path, dict]:
    """A run folder (``config.yaml`` + ``model_final.pth``) of an untrained tiny ``kind`` detector."""
    config_name, overrides = RUN_KINDS[kind]
    base = [o for o in tiny_training_overrides(folder) if not o.startswith(("model.arch", "data.size_divisibility"))]
    config = load_config(
        config_name,
        base
        + overrides
        + [
            "data.test_max_size=128",
            "model.fcos.detections_per_image=1000",
            "model.retinanet.detections_per_image=1000",
            *extra,
        ],
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("cls_logits", "cls_score")):
                module.weight.mul_(10.0)
                module.bias.fill_(-1.0)
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": model.state_dict(), "config": config}, folder / "model_final.pth")
    (folder / "config.yaml").write_text(dump_config(config))
    return folder, config


def image_copies(config: dict, folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """Validation images of the run's synthetic dataset saved as PNGs of the given ``(h, w)``."""
    paths = resolve_data_paths(config)
    sources = sorted(paths["val_images"].iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (height, width) in enumerate(sizes):
        with Image.open(sources[k % len(sources)]) as image:
            resized = image.convert("RGB").resize((width, height), Image.BILINEAR)
        path = folder / f"image_{k}_{height}x{width}.png"
        resized.save(path)
        out.append(path)
    return out


def read_rgb(path: Path) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 RGB in 0..255."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
