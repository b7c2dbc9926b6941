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
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from msadkit.errors import DatasetError

__all__ = [
    "CLASS_NAMES",
    "SyntheticDataset",
    "SyntheticScene",
    "generate_synthetic_dataset",
    "render_scene",
    "shape_mask",
    "sample_object_side",
]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

_GENERATOR_NAME = "msadkit.synthetic"
# Bump whenever the drawing code changes, so that a cached dataset from older code is regenerated.
_FORMAT_VERSION = 1
_SPLIT_CODES = {"train": 1, "val": 2, "unlabeled": 3}

MIN_OBJECT_SIDE = 6.0
# COCO area buckets as side lengths of a square box: small < 32², medium < 96², large >= 96².
_COCO_BUCKET_EDGES = (32.0, 96.0)
# Bucket weights close to COCO's own share of small / medium / large objects (41 / 34 / 24 %).
_COCO_BUCKET_WEIGHTS = (0.40, 0.35, 0.25)
# Fraction of an earlier object's drawn pixels that later objects may cover at most.
MAX_OCCLUDED_FRACTION = 0.3
# Probability that an image holds no object at all.
EMPTY_IMAGE_PROB = 0.04
_PLACEMENT_ATTEMPTS = 20
_MIN_CONTRAST = 60.0
_NOISE_STD = 8.0
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


@dataclass(frozen=True)
class SyntheticScene:
    """One rendered image and its objects.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB pixels.
        boxes: ``(M, 4)`` float64 COCO ``[x, y, w, h]`` boxes, tight around the visible pixels.
        labels: ``(M,)`` int64 class indices into :data:`CLASS_NAMES`.
        owner: ``(H, W)`` int16 map: index of the object visible at each pixel, ``-1`` for background.
        drawn_area: ``(M,)`` int64 pixels each object covered when it was drawn, before occlusion.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    owner: np.ndarray
    drawn_area: np.ndarray


def sample_object_side(rng: np.random.Generator, image_size: int) -> float:
    """Draw the side of an object's (square-equivalent) box, ``sqrt(w * h)``, in pixels.

    The side is log-uniform inside each COCO area bucket that fits between ``MIN_OBJECT_SIDE`` and
    half the image side, and the bucket is chosen with weights close to COCO's object-size shares,
    so every bucket gets a fair share even though a plain log-uniform law over [6, 128] would give
    large objects only ~9 %.
    """
    lo, hi = MIN_OBJECT_SIDE, max(MIN_OBJECT_SIDE, image_size / 2.0)
    edges = [lo, *[e for e in _COCO_BUCKET_EDGES if lo < e < hi], hi]
    weights = np.array(_COCO_BUCKET_WEIGHTS[: len(edges) - 1], dtype=np.float64)
    bucket = int(rng.choice(len(weights), p=weights / weights.sum()))
    log_side = rng.uniform(math.log(edges[bucket]), math.log(edges[bucket + 1]))
    return float(math.exp(log_side))


def _regular_outline(name: str, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices ``(V, 2)`` of a class shape around the origin, randomly rotated."""
    if name == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    elif name == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif name == "cross":
        t = rng.uniform(0.28, 0.4)  # half thickness of the arms relative to the half length
        pts = np.array(
            [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]],
            dtype=np.float64,
        )
    else:
        raise ValueError(f"unknown polygon shape {name!r}")
    # Any orientation for triangles; modest tilts for squares and crosses keep them from turning
    # into diamonds / saltires, which would blur the class identity at tiny sizes.
    max_tilt = 180.0 if name == "triangle" else 25.0
    theta = np.deg2rad(rng.uniform(-max_tilt, max_tilt))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return pts @ rot.T


def shape_mask(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Rasterise one class shape scaled to fill a ``height x width`` frame.

    The outline's extreme points are placed on the frame's borders; a rasterised shape may still
    miss a border row or column by a pixel, which is why boxes are measured from the drawn pixels.

    Args:
        name: one of :data:`CLASS_NAMES`.
        width: frame width in pixels (>= 1).
        height: frame height in pixels (>= 1).
        rng: random source for rotation and arm thickness.

    Returns:
        ``(height, width)`` bool mask.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([0, 0, width - 1, height - 1], fill=255)
    else:
        pts = _regular_outline(name, rng)
        pts = pts - pts.min(axis=0)
        pts = pts / np.maximum(pts.max(axis=0), 1e-9) * np.array([width - 1, height - 1])
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured ``(size, size, 3)`` float32 background: a colour gradient blended with smooth blobs.

    Both layers are drawn at a few pixels and upsampled bilinearly by PIL, which keeps the
    generator fast; the per-pixel noise is added later over the whole image.
    """
    corners = rng.uniform(0.0, 255.0, size=(2, 2, 3)).astype(np.uint8)
    gradient = Image.fromarray(corners, "RGB").resize((size, size), Image.BILINEAR)
    coarse = int(rng.integers(3, 7))
    blob_cells = rng.uniform(0.0, 255.0, size=(coarse, coarse, 3)).astype(np.uint8)
    blobs = Image.fromarray(blob_cells, "RGB").resize((size, size), Image.BICUBIC)
    texture = Image.blend(gradient, blobs, float(rng.uniform(0.25, 0.5)))
    return np.asarray(texture, dtype=np.float32)


def _pick_colour(rng: np.random.Generator, local_background: np.ndarray) -> np.ndarray:
    """An RGB fill colour, the same law for every class, kept apart from the local background."""
    colour = rng.uniform(0.0, 255.0, size=3)
    for _ in range(10):
        if np.abs(colour - local_background).mean() >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 255.0, size=3)
    return colour.astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    *,
    image_size: int,
    max_objects: int,
    noise_std: float = _NOISE_STD,
    flat_background: bool = False,
) -> SyntheticScene:
    """Render one image with up to ``max_objects`` shapes.

    Objects lie fully inside the image. A new object may cover at most ``MAX_OCCLUDED_FRACTION`` of
    the drawn pixels of every earlier object; a placement that would hide more is retried elsewhere
    and the object is dropped after ``_PLACEMENT_ATTEMPTS`` tries. Boxes are computed after all
    objects are drawn, from the pixels each object still shows, so they are tight in the final image.

    Args:
        rng: the random source; the same state gives the same scene.
        image_size: side of the square image.
        max_objects: the most objects one image may hold.
        noise_std: standard deviation of the per-pixel Gaussian noise added last.
        flat_background: draw on a single flat colour instead of the textured background (tests).

    Returns:
        The :class:`SyntheticScene`.
    """
    size = int(image_size)
    if flat_background:
        image = np.broadcast_to(rng.uniform(0.0, 255.0, size=3).astype(np.float32), (size, size, 3)).copy()
    else:
        image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)
    max_side = max(int(MIN_OBJECT_SIDE), size // 2)
    drawn_area: list[int] = []  # pixels each object covered when it was drawn
    visible_area: list[int] = []  # pixels each object still shows
    labels: list[int] = []

    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, max_objects + 1))
    for _ in range(num_objects):
        label = int(rng.integers(len(CLASS_NAMES)))
        side = sample_object_side(rng, size)
        log_aspect = rng.uniform(math.log(0.75), math.log(4.0 / 3.0))
        w = int(np.clip(round(side * math.exp(log_aspect / 2)), MIN_OBJECT_SIDE, max_side))
        h = int(np.clip(round(side * math.exp(-log_aspect / 2)), MIN_OBJECT_SIDE, max_side))
        mask = shape_mask(CLASS_NAMES[label], w, h, rng)
        if not mask.any():
            continue
        for _attempt in range(_PLACEMENT_ATTEMPTS):
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            under = owner[y0 : y0 + h, x0 : x0 + w][mask]
            covered = np.bincount(under[under >= 0], minlength=len(drawn_area))
            if all(
                drawn_area[j] - visible_area[j] + covered[j] <= MAX_OCCLUDED_FRACTION * drawn_area[j]
                for j in np.nonzero(covered)[0]
            ):
                break
        else:
            continue
        region = image[y0 : y0 + h, x0 : x0 + w]
        colour = _pick_colour(rng, region[mask].mean(axis=0))
        region[mask] = colour
        owner[y0 : y0 + h, x0 : x0 + w][mask] = len(drawn_area)
        for j in np.nonzero(covered)[0]:
            visible_area[j] -= int(covered[j])
        drawn_area.append(int(mask.sum()))
        visible_area.append(int(mask.sum()))
        labels.append(label)

    boxes = np.zeros((len(labels), 4), dtype=np.float64)
    for j in range(len(labels)):
        ys, xs = np.nonzero(owner == j)
        boxes[j] = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    if noise_std > 0:
        image += np.float32(noise_std) * rng.standard_normal(image.shape, dtype=np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return SyntheticScene(
        image=pixels,
        boxes=boxes,
        labels=np.asarray(labels, dtype=np.int64),
        owner=owner,
        drawn_area=np.asarray(drawn_area, dtype=np.int64),
    )


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
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
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
