"""Images and branch evaluations of finished run folders, for the analysis notebooks."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from msadkit.data import DetectionCollator
from msadkit.data.build import build_dataset
from msadkit.engine.evaluation.run_evaluation import evaluate_run
from msadkit.errors import ConfigError
from msadkit.modeling.image_batch import pixel_normalizer, to_model_input
from msadkit.utils.device import resolve_device
from msadkit.utils.run_folder import read_run_config

__all__ = ["load_image_batch", "count_images", "display_images", "evaluate_msad_branches", "load_starting_student"]


def load_image_batch(
    config: dict[str, Any],
    *,
    split: str = "val",
    indices: Sequence[int] = (0, 1),
    device: str | torch.device = "cpu",
) -> Any:
    """A padded batch of dataset images with the config's test transform.

    Args:
        config: a resolved config (its ``data`` section: dataset, sizes, padding; ``model.pixel_*``).
        split: ``"val"`` or ``"train"``.
        indices: dataset indices of the images.

    Returns:
        A ``DetectionBatch`` (``images (N, 3, H, W)`` normalised floats on ``device``, ``image_sizes``, ``targets`` with boxes in
        the resized image's pixels).

    Raises:
        ConfigError: an index is outside the split.
    """
    dataset = build_dataset(config, split, train=False)
    bad = [i for i in indices if not 0 <= int(i) < len(dataset)]
    if bad or not indices:
        raise ConfigError(
            f"image indices {list(indices)} must be non-empty and within the {len(dataset)} images of the {split} split"
        )
    collate = DetectionCollator(config["data"]["size_divisibility"])
    batch = collate([dataset[int(i)] for i in indices])
    return to_model_input(batch, pixel_normalizer(config), resolve_device(device, argument="device"))


def count_images(config: dict[str, Any], *, split: str = "val") -> int:
    """How many images the config's ``split`` holds (valid indices are ``0 .. count - 1``)."""
    return len(build_dataset(config, split, train=False))


def display_images(images: torch.Tensor, config: dict[str, Any]) -> np.ndarray:
    """Undo the normalisation of a batch: ``(N, 3, H, W)`` -> ``(N, H, W, 3)`` floats in ``[0, 1]``."""
    pixels = pixel_normalizer(config).inverse(images.detach().float().cpu())
    return (pixels / 255.0).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def evaluate_msad_branches(
    run_dir: str | os.PathLike,
    *,
    branches: Sequence[str] = ("high", "low"),
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """COCO metrics of an MSAD teacher run predicting with each of ``branches`` alone.

    Nothing is written to the run folder (its ``eval.json`` stays the configured branch's).

    Raises:
        ConfigError: the run is not an MSAD teacher.
    """
    config = read_run_config(run_dir)
    if config["model"]["arch"] != "msad_teacher":
        raise ConfigError(f"{run_dir} is a {config['model']['arch']} run; branch evaluation needs an msad_teacher run")
    results = {}
    for branch in branches:
        # evaluate_run updates whole config sections, so the msad section goes in complete.
        msad = {**config["model"]["msad"], "eval_branch": branch}
        results[branch] = evaluate_run(run_dir, overrides={"model": {"msad": msad}}, device=device, write=False)
    return results


def load_starting_student(
    student_run: str | os.PathLike,
    *,
    teacher: torch.nn.Module,
    teacher_config: dict[str, Any],
    device: str = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The student of a distillation run as it was before its first iteration.

    Built from the run's config with the run's seed, from the backbone checkpoint it names; with
    ``distill.init_student_from_teacher`` (MSAD) its backbone, FPN and head are then copied from
    ``teacher``, as the run did.

    Returns:
        ``(model, config, how)`` with the model in eval mode on ``device`` and ``how`` saying where
        its weights came from (``"teacher init"`` or ``"its initialisation"``).

    Raises:
        MsadkitError: the config's backbone checkpoint is gone, or the teacher does not fit.
    """
    from msadkit.distill.build import init_student_from_teacher
    from msadkit.modeling.registry import build_model

    config = read_run_config(student_run)
    # The seed the run started from: the same random initialisation of what the teacher does not set.
    torch.manual_seed(int(config["trainer"]["seed"]))
    model = build_model(config)
    how = "its initialisation"
    if config["distill"].get("init_student_from_teacher"):
        init_student_from_teacher(model, teacher, student_config=config, teacher_config=teacher_config)
        how = "teacher init"
    return model.to(resolve_device(device, argument="device")).eval(), config, how
