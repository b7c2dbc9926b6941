"""Run a detector over a data loader and collect COCO-format results."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from msadkit.data import CocoDetectionDataset, DetectionCollator, build_transforms
from msadkit.data.build import resolve_data_paths
from msadkit.data.transforms import Compose, ResizeShortSide
from msadkit.engine.inference.coco_results import detections_to_coco
from msadkit.errors import ConfigError, DatasetError
from msadkit.modeling.image_batch import PixelNormalizer, pixel_normalizer, to_model_input

__all__ = [
    "autocast_context",
    "predict_coco_results",
    "test_transforms",
    "run_categories",
    "same_shape_batches",
    "detect_images",
]


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
    pixels: PixelNormalizer,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    channels_last: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Detections of ``model`` on every image of ``loader`` in COCO result format.

    Boxes are mapped back to the original image pixels with each target's resize ``scale``;
    ``pixels`` (the model's pixel convention) normalises each uint8 batch on ``device``.
    ``progress`` shows a progress bar of the batches on standard error.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    batches: Any = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, total=len(loader), desc="detect", unit="batch")
    try:
        for batch in batches:
            batch = to_model_input(batch, pixels, device, channels_last=channels_last)
            with autocast_context(device, precision):
                detections = model(batch.images, batch.image_sizes)
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


def test_transforms(config: dict[str, Any]) -> Compose:
    """A run's evaluation pipeline: resize to ``data.test_short_side`` (long side at most
    ``data.test_max_size``); images stay uint8 and the model's pixel convention normalises them."""
    data = config["data"]
    return build_transforms(train=False, short_sides=[data["test_short_side"]], max_size=data["test_max_size"])


def run_categories(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The COCO ``categories`` of a run's classes, by id: those of its training json.

    ``categories[label]`` is the category of contiguous class index ``label``, the mapping the
    dataset used in training.

    Raises:
        DatasetError: the training json cannot be read.
        ConfigError: its category count differs from ``model.num_classes``.
    """
    train_json = resolve_data_paths(config)["train_json"]
    try:
        categories = json.loads(Path(train_json).read_text(encoding="utf-8"))["categories"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"the run's training annotations {train_json}: cannot read its categories ({exc})") from None
    categories = sorted(categories, key=lambda c: c["id"])
    num_classes = int(config["model"]["num_classes"])
    if len(categories) != num_classes:
        raise ConfigError(
            f"the model predicts {num_classes} classes (model.num_classes) but its training annotations "
            f"{train_json} have {len(categories)} categories"
        )
    return categories


def evaluation_category_ids(config: dict[str, Any], dataset: CocoDetectionDataset) -> list[int]:
    """The COCO category id of each of the run's labels, checked against the set it is evaluated on.

    The run's own mapping (its training json, :func:`run_categories`) is the one source: a
    validation json whose categories differ (other ids, another order, another count) would
    silently score label ``i`` as another class, so it is refused.

    Raises:
        ConfigError: the two jsons' category ids differ (both files and both id lists named).
    """
    ids = [int(category["id"]) for category in run_categories(config)]
    if ids != list(dataset.category_ids):
        train_json = resolve_data_paths(config)["train_json"]
        raise ConfigError(
            f"the run's labels are the categories of its training annotations {train_json} (ids {ids[:20]}) but the "
            f"evaluation annotations {dataset.coco_json_path} have category ids {list(dataset.category_ids)[:20]}; "
            "evaluate on annotations with the training set's categories"
        )
    return ids


def same_shape_batches(config: dict[str, Any], records: Sequence[dict[str, Any]], batch_size: int) -> list[list[int]]:
    """Indices of ``records`` in batches of at most ``batch_size`` images that all pad to one size.

    A batch pads its images to the largest one, and a GroupNorm head's statistics include the
    padding: an image's detections would change with its batch-mates (by up to 0.08 in score on a
    GroupNorm FCOS). Grouped by their padded size after the test resize, images are padded exactly
    as when alone, as the exported model pads them.

    Args:
        config: the run's config (``data.test_short_side``, ``test_max_size``, ``size_divisibility``).
        records: ``{"height", "width", ...}`` per image, in dataset order.
        batch_size: most images per batch.
    """
    data = config["data"]
    resize = ResizeShortSide([data["test_short_side"]], data["test_max_size"], random=False)
    divisor = int(data["size_divisibility"])
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, record in enumerate(records):
        height, width = int(record["height"]), int(record["width"])
        scale = resize.scale_for(height, width, data["test_short_side"])
        padded = tuple(-(-max(1, int(round(side * scale))) // divisor) * divisor for side in (height, width))
        groups.setdefault(padded, []).append(index)
    return [group[k : k + batch_size] for group in groups.values() for k in range(0, len(group), batch_size)]


def detect_images(
    model: nn.Module,
    config: dict[str, Any],
    records: Sequence[dict[str, Any]],
    image_root: str | os.PathLike,
    categories: Sequence[dict[str, Any]],
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Detections of a run's model on image files, with the run's test pipeline, in COCO result format.

    The one inference of ``msadkit pseudo-label`` and ``msadkit predict``: images are resized as
    the run was evaluated (``data.test_short_side``, ``data.test_max_size``), batched
    (``batch_size``, default ``trainer.eval_batch_size``) and padded to ``data.size_divisibility``;
    boxes come back in original pixels as ``[x, y, w, h]``. Only images that pad to the same size
    share a batch (:func:`same_shape_batches`), so each image's detections do not depend on the
    others and equal those of the exported model.

    Args:
        model: the trained detector.
        config: its config.
        records: ``{"id", "file_name", "width", "height"}`` per image; ``file_name`` is relative to
            ``image_root`` (or absolute).
        image_root: folder of the file names.
        categories: the COCO categories of the model's classes, ``categories[label]`` for class
            index ``label``.
        device: where the model runs.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``{"image_id", "category_id", "bbox", "score"}`` per detection.

    Raises:
        DatasetError: an image file is missing or cannot be decoded.
    """
    with tempfile.TemporaryDirectory(prefix="msadkit-detect-") as tmp:
        # CocoDetectionDataset validates and loads the images; it reads an image-info json.
        info_json = Path(tmp) / "images.json"
        info_json.write_text(json.dumps({"images": list(records), "annotations": [], "categories": list(categories)}))
        dataset = CocoDetectionDataset(info_json, Path(image_root), transform=test_transforms(config))
        workers = int(config["data"]["num_workers"])
        loader = DataLoader(
            dataset,
            batch_sampler=same_shape_batches(config, records, batch_size or int(config["trainer"]["eval_batch_size"])),
            num_workers=workers,
            collate_fn=DetectionCollator(config["data"]["size_divisibility"]),
        )
        return predict_coco_results(
            model.to(device),
            loader,
            [c["id"] for c in categories],
            pixels=pixel_normalizer(config),
            device=device,
            precision=config["trainer"]["precision"],
            progress=progress,
        )
