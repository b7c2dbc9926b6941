"""Rendering one synthetic scene: shapes of COCO-like sizes on a textured, noisy background.

The classes differ only in shape: every class draws its colour, size, aspect ratio and rotation
from the same distributions, so a detector cannot shortcut through colour. Object sizes follow a
piecewise log-uniform law over the COCO area buckets (small < 32², medium < 96², large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "SyntheticScene", "render_scene", "shape_mask", "sample_object_side", "MAX_OCCLUDED_FRACTION"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

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
