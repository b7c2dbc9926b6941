"""A small, deterministic, multi-scale detection dataset written in COCO format.

Shapes (the classes) of very different sizes are drawn on textured, noisy backgrounds. The classes
differ only in shape: every class draws its colour, size, aspect ratio and rotation from the same
distributions, so a detector cannot shortcut through colour. Object sizes follow a piecewise
log-uniform law over the COCO area buckets (small < 32², medium < 96², large), so that the smallest
objects nearly vanish when the image is subsampled 2x, which is exactly the regime low-resolution
distillation targets.

Layout written by :func:`generate_synthetic_dataset`::

    out_dir/
        manifest.json            generation parameters (written last: its presence means complete)
        train.json  val.json     COCO detection annotations
        unlabeled.json           images only, empty annotation list (when num_unlabeled > 0)
        images/<split>/000001.png ...
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from msadkit.data.synthetic_scenes import (
    CLASS_NAMES,
    MAX_OCCLUDED_FRACTION,
    SyntheticScene,
    render_scene,
    sample_object_side,
    shape_mask,
)
from msadkit.errors import DatasetError

__all__ = [
    "CLASS_NAMES",
    "scene_rng",
    "SyntheticDataset",
    "SyntheticScene",
    "generate_synthetic_dataset",
    "render_scene",
    "shape_mask",
    "sample_object_side",
    "MAX_OCCLUDED_FRACTION",
]

_GENERATOR_NAME = "msadkit.synthetic"
# Bump whenever the drawing code changes, so that a cached dataset from older code is regenerated.
_FORMAT_VERSION = 1
_SPLIT_CODES = {"train": 1, "val": 2, "unlabeled": 3}


def scene_rng(seed: int, split: str, index: int, *stream: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` (``stream`` picks further independent
    streams of the same image, e.g. for crops taken from it)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index, *stream]))

# zlib strategy for PNG: noisy pixels barely compress, and Huffman-only coding is ~2x faster than
# the default strategy at the same size.
_Z_HUFFMAN_ONLY = 2


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a generated dataset lives.

    Attributes:
        root: the dataset folder.
        class_names: class names in category-id order (category id ``i + 1`` is ``class_names[i]``).
        splits: the splits written, a subset of ``("train", "val", "unlabeled")`` in that order.
        image_size: side of the square images in pixels.
    """

    root: Path
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    image_size: int

    def json_path(self, split: str) -> Path:
        """The COCO json of ``split``."""
        self._check_split(split)
        return self.root / f"{split}.json"

    def image_root(self, split: str) -> Path:
        """The folder that ``file_name`` entries of ``split`` are relative to."""
        self._check_split(split)
        return self.root / "images" / split

    @property
    def train_json(self) -> Path:
        return self.json_path("train")

    @property
    def val_json(self) -> Path:
        return self.json_path("val")

    @property
    def unlabeled_json(self) -> Path | None:
        return self.json_path("unlabeled") if "unlabeled" in self.splits else None

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise DatasetError(f"synthetic dataset {self.root} has no split {split!r}; it has {list(self.splits)}")


def _params(**kwargs: Any) -> dict[str, Any]:
    return {"generator": _GENERATOR_NAME, "format_version": _FORMAT_VERSION, "class_names": list(CLASS_NAMES), **kwargs}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_split(root: Path, split: str, count: int, *, seed: int, image_size: int, max_objects: int) -> None:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        # One independent stream per image: any image can be re-rendered alone, and adding images
        # to a split does not change the existing ones.
        rng = scene_rng(seed, split, index)
        scene = render_scene(rng, image_size=image_size, max_objects=max_objects)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(scene.image, "RGB").save(
            image_dir / file_name, compress_level=1, compress_type=_Z_HUFFMAN_ONLY
        )
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        if split == "unlabeled":
            continue
        for box, label in zip(scene.boxes.tolist(), scene.labels.tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"msadkit synthetic shapes, split {split}", "version": str(_FORMAT_VERSION)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES)],
    }
    with open(root / f"{split}.json", "w", encoding="utf-8") as handle:
        json.dump(coco, handle, separators=(",", ":"))


def _install(src: Path, dst: Path, params: dict[str, Any]) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an older dataset there.

    Several processes (e.g. the ranks of a distributed run) may generate the same dataset at
    once; whoever finishes second finds an identical dataset in place and discards its own copy.
    """
    if _read_manifest(dst / "manifest.json") == params:
        shutil.rmtree(src, ignore_errors=True)
        return
    if not dst.exists():
        try:
            os.replace(src, dst)
            return
        except OSError:
            if _read_manifest(dst / "manifest.json") == params:
                shutil.rmtree(src, ignore_errors=True)
                return
            if not dst.exists():
                raise
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old / dst.name)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 256,
    num_val: int = 64,
    num_unlabeled: int = 0,
    image_size: int = 256,
    seed: int = 0,
    max_objects: int = 6,
) -> SyntheticDataset:
    """Write the synthetic shapes dataset to ``out_dir`` (or reuse it if it is already there).

    If ``out_dir/manifest.json`` records the same parameters, nothing is written. Otherwise the
    dataset is generated into a temporary folder next to ``out_dir`` and moved into place, so an
    interrupted run never leaves a partial dataset behind. An existing ``out_dir`` is only replaced
    if it is empty or holds a synthetic dataset (it has this generator's manifest): any other
    folder is left alone and raises :class:`DatasetError`.

    Box areas (``area``) are box areas ``w * h``; there are no segmentations. The same seed always
    gives byte-identical json files and identical pixels.

    Args:
        out_dir: the dataset folder.
        num_train: images in the ``train`` split (>= 1).
        num_val: images in the ``val`` split (>= 1).
        num_unlabeled: images in the ``unlabeled`` split (images only); 0 writes no such split.
        image_size: side of the square images in pixels (>= 32).
        seed: random seed.
        max_objects: the most objects per image (>= 1).

    Returns:
        A :class:`SyntheticDataset` describing the folder.
    """
    for name, value, minimum in (
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("num_unlabeled", num_unlabeled, 0),
        ("image_size", image_size, 32),
        ("max_objects", max_objects, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DatasetError(f"generate_synthetic_dataset: {name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"generate_synthetic_dataset: seed must be a non-negative integer, got {seed!r}")

    out = Path(out_dir).expanduser().absolute()
    counts = {"train": num_train, "val": num_val, "unlabeled": num_unlabeled}
    params = _params(num_train=num_train, num_val=num_val, num_unlabeled=num_unlabeled,
                     image_size=image_size, seed=seed, max_objects=max_objects)
    result = SyntheticDataset(
        root=out,
        class_names=CLASS_NAMES,
        splits=tuple(s for s, n in counts.items() if n > 0),
        image_size=image_size,
    )

    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"synthetic dataset folder {out} exists and is not a folder")
        manifest = _read_manifest(out / "manifest.json")
        if manifest == params:
            return result
        is_ours = manifest is not None and manifest.get("generator") == _GENERATOR_NAME
        if not is_ours and any(out.iterdir()):
            raise DatasetError(
                f"synthetic dataset folder {out} already holds files that are not a synthetic dataset "
                "(no valid manifest.json); choose another --out folder or empty it"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes the folder private; the dataset is meant to be shared
        for split in result.splits:
            _write_split(tmp, split, counts[split], seed=seed, image_size=image_size, max_objects=max_objects)
        # The manifest goes last: a folder with a manifest is a complete dataset.
        with open(tmp / "manifest.json", "w", encoding="utf-8") as handle:
            json.dump(params, handle, indent=2, sort_keys=True)
        _install(tmp, out, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
