"""Teacher pseudo-labels on unlabeled images for SAD (docs/methods.md §2.4), ``msadkit pseudo-label``.

A trained teacher labels unlabeled images (:func:`generate_pseudo_labels`); its detections above a
score threshold become a COCO json that :mod:`msadkit.engine.semi_supervised.sad_loader` trains on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msadkit.data.images import IMAGE_SUFFIXES, find_image_files, image_size
from msadkit.engine.inference.detect import detect_images, run_categories
from msadkit.errors import ConfigError, DatasetError
from msadkit.utils.run_folder import write_text_atomic

__all__ = ["image_records", "generate_pseudo_labels"]


def image_records(images: str | os.PathLike, *, image_root: str | os.PathLike | None = None) -> tuple[list[dict], Path]:
    """The images to label and the folder their file names are relative to.

    Args:
        images: a folder (every file with an image suffix directly inside it, sorted by name, ids
            1..n) or a COCO json whose ``images`` list names them (its ids are kept; annotations,
            if any, are ignored).
        image_root: folder of the json's ``file_name`` entries; defaults to the json's folder.

    Returns:
        ``(records, root)``: ``{"id", "file_name", "width", "height"}`` per image.

    Raises:
        DatasetError: nothing to label, or an unreadable json or image.
    """
    source = Path(images).expanduser()
    if source.is_dir():
        files = find_image_files(source)
        if not files:
            raise DatasetError(f"--images {source}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        records = []
        for image_id, path in enumerate(files, start=1):
            width, height = image_size(path)
            records.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        return records, source
    if not source.is_file():
        raise DatasetError(f"--images {source}: no such image folder or COCO json")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"--images {source}: cannot be read as json: {exc}") from None
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"--images {source}: expected a COCO json with a non-empty \"images\" list")
    root = Path(image_root).expanduser() if image_root else source.parent
    records, seen = [], set()
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not entry.get("file_name"):
            raise DatasetError(f"--images {source}: image #{k} needs an integer id and a file_name")
        if entry["id"] in seen:
            raise DatasetError(f"--images {source}: image id {entry['id']} appears twice")
        seen.add(entry["id"])
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int)):
            width, height = image_size(root / entry["file_name"])
        records.append({"id": entry["id"], "file_name": entry["file_name"], "width": width, "height": height})
    return records, root


def generate_pseudo_labels(
    model: nn.Module,
    config: dict[str, Any],
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    score_threshold: float = 0.4,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Label ``images`` with a trained detector and write a COCO json atomically.

    The detector runs with its config's test transforms; boxes are mapped back to original image
    pixels. Detections scoring at least ``score_threshold`` (and above the model's own
    ``score_thresh``, which filters first) become annotations with their ``score``; images
    without any keep an entry in ``images`` and act as background. Categories are those of the
    teacher's training json, so the file is read by :class:`CocoDetectionDataset` with the same
    label mapping as the labeled set.

    Args:
        model: the trained detector (weights loaded).
        config: its config (test transforms, training json, precision).
        images: image folder or COCO image-info json (see :func:`image_records`).
        out: the json to write.
        image_root: folder of a json's ``file_name`` entries.
        score_threshold: minimum detection score kept.
        device: where the detector runs.
        batch_size: images per forward pass; defaults to ``trainer.eval_batch_size``.

    Returns:
        ``{"path", "image_root", "num_images", "num_annotations"}``.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    records, root = image_records(images, image_root=image_root)
    categories = run_categories(config)
    results = detect_images(
        model, config, records, root, categories, device=device, batch_size=batch_size
    )
    annotations = []
    for result in results:
        x, y, w, h = result["bbox"]
        if result["score"] < score_threshold or w <= 0 or h <= 0:
            continue
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": result["image_id"],
                "category_id": result["category_id"],
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
                "score": float(result["score"]),
            }
        )
    coco = {
        "info": {"description": "msadkit teacher pseudo-labels", "score_threshold": score_threshold},
        "images": records,
        "annotations": annotations,
        "categories": categories,
    }
    path = write_text_atomic(out, json.dumps(coco, separators=(",", ":")))
    return {"path": path, "image_root": root, "num_images": len(records), "num_annotations": len(annotations)}
