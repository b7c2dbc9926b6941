"""RetinaNet anchors: A boxes per feature-map location on every pyramid level (docs/methods.md §2.3).

Anchor order inside a level is ``(y, x, a)``: all A anchors of location ``(0, 0)``, then those of
``(0, 1)``, and so on row by row. This is the order that
:func:`msadkit.modeling.detectors.dense_detector.permute_to_nhwk` gives a head output ``(N, A*K, H, W)``, so
anchor ``r`` of a level lines up with row ``r`` of the flattened predictions ``(N, H*W*A, K)``.

Within one location the A anchors run over sizes first and aspect ratios second:
``a = size_index * len(aspect_ratios) + ratio_index``. An aspect ratio is ``height / width``; an
anchor of size ``s`` and ratio ``r`` has area ``s**2``, width ``s / sqrt(r)`` and height
``s * sqrt(r)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "retinanet_anchor_sizes", "DEFAULT_ANCHOR_SIZES"]

_OCTAVE_SCALES = (2.0**0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))


def retinanet_anchor_sizes(
    base_sizes: Sequence[float] = (32, 64, 128, 256, 512),
    octave_scales: Sequence[float] = _OCTAVE_SCALES,
) -> tuple[tuple[float, ...], ...]:
    """RetinaNet's anchor sizes: per level, the base size times each octave scale.

    The base size of a level is the anchor scale 4 times its stride (32 for P3 at stride 8, ...,
    512 for P7 at stride 128).

    Args:
        base_sizes: one base size per level, in input pixels.
        octave_scales: multipliers applied to every base size.

    Returns:
        ``len(base_sizes)`` tuples of ``len(octave_scales)`` sizes, e.g.
        ``((32, 40.3, 50.8), (64, 80.6, 101.6), ...)``.
    """
    return tuple(tuple(float(base) * float(scale) for scale in octave_scales) for base in base_sizes)


DEFAULT_ANCHOR_SIZES = retinanet_anchor_sizes()


def _cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """``(len(sizes) * len(aspect_ratios), 4)`` xyxy anchors centred at the origin."""
    boxes = []
    for size in sizes:
        for ratio in aspect_ratios:
            width = size / math.sqrt(ratio)
            height = size * math.sqrt(ratio)
            boxes.append([-width / 2, -height / 2, width / 2, height / 2])
    # Built in float64 so the float32 result is the correctly rounded value of the formula.
    return torch.tensor(boxes, dtype=torch.float64).float()


class AnchorGenerator(nn.Module):
    """Anchors for every location of every pyramid level.

    The cell anchors are non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state dict, so checkpoints hold learned weights only. Anchors are always float32, whatever the
    model's dtype, because bf16 cannot represent pixel coordinates of large images exactly.

    Args:
        sizes: per level, the anchor sizes (square roots of the areas) in input pixels. Every level
            must have the same number of sizes. Defaults to :data:`DEFAULT_ANCHOR_SIZES`.
        aspect_ratios: ``height / width`` ratios, shared by all levels.
        strides: per level, the distance between neighbouring locations in input pixels.
        offset: location ``(y, x)`` of a level is centred at ``((x + offset) * stride,
            (y + offset) * stride)``; 0.0 as in detectron2's RetinaNet, 0.5 for pixel centres.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] = DEFAULT_ANCHOR_SIZES,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"AnchorGenerator: got {len(sizes)} levels of sizes but {len(strides)} strides")
        if len({len(level) for level in sizes}) != 1 or len(sizes[0]) == 0:
            raise ValueError(
                f"AnchorGenerator: every level needs the same, non-zero number of sizes, got {tuple(map(len, sizes))}"
            )
        if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"AnchorGenerator: aspect_ratios must be positive, got {tuple(aspect_ratios)}")
        if any(s <= 0 for level in sizes for s in level):
            raise ValueError("AnchorGenerator: anchor sizes must be positive")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"AnchorGenerator: offset must be in [0, 1), got {offset}")
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.strides = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self.num_anchors_per_location = len(self.sizes[0]) * len(self.aspect_ratios)
        for level, level_sizes in enumerate(self.sizes):
            self.register_buffer(
                f"cell_anchors_{level}", _cell_anchors(level_sizes, self.aspect_ratios), persistent=False
            )

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def cell_anchors(self, level: int) -> Tensor:
        """``(A, 4)`` float32 anchors of ``level`` centred at the origin."""
        return getattr(self, f"cell_anchors_{level}").float()

    def forward(
        self, feature_shapes: Sequence[tuple[int, int]], strides: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Anchors of every level.

        Args:
            feature_shapes: ``(Hi, Wi)`` of each level, finest first.
            strides: per level stride overriding the configured ones, e.g. the high-resolution
                strides for a low-resolution MSAD branch; the sizes of level ``i`` stay those of
                level ``i``.

        Returns:
            Per level a float32 ``(Hi*Wi*A, 4)`` xyxy tensor in ``(y, x, a)`` order.
        """
        strides = tuple(strides) if strides is not None else self.strides
        if len(feature_shapes) != self.num_levels or len(strides) != self.num_levels:
            raise ValueError(
                f"AnchorGenerator: configured for {self.num_levels} levels, got {len(feature_shapes)} "
                f"feature shapes and {len(strides)} strides"
            )
        anchors = []
        for level, ((height, width), stride) in enumerate(zip(feature_shapes, strides)):
            cell = self.cell_anchors(level)
            xs = (torch.arange(width, dtype=torch.float32, device=cell.device) + self.offset) * stride
            ys = (torch.arange(height, dtype=torch.float32, device=cell.device) + self.offset) * stride
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
            anchors.append((centres + cell[None]).reshape(-1, 4))
        return anchors

    def extra_repr(self) -> str:
        return f"strides={self.strides}, aspect_ratios={self.aspect_ratios}, offset={self.offset}"
