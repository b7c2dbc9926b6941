"""FCOS location grid and target assignment (docs/methods.md §1.2, §1.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from msadkit.config.defaults import FCOS_CENTER_SAMPLING_RADIUS

__all__ = [
    "DEFAULT_SIZES_OF_INTEREST",
    "FCOSTargets",
    "compute_locations",
    "assign_fcos_targets",
    "centerness_target",
    "ASSIGNMENT_CHUNK_ELEMENTS",
]

DEFAULT_SIZES_OF_INTEREST: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, float("inf")),
)

# Upper bound on the elements of one (images, locations, boxes) tensor during assignment; about
# 64 MB in float32, so a large batch of crowded images is assigned a few images at a time.
ASSIGNMENT_CHUNK_ELEMENTS = 1 << 24


def compute_locations(
    feature_shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """Image-plane centres of the feature cells of every level.

    The cell ``(i, j)`` of a level with stride ``s`` sits at ``(j*s + s//2, i*s + s//2)``.

    Returns:
        per level a ``(Hi*Wi, 2)`` tensor of ``(x, y)`` in row-major order (the order of
        ``permute_to_nhwk``).
    """
    locations = []
    for (height, width), stride in zip(feature_shapes, strides):
        xs = torch.arange(width, device=device, dtype=torch.float32) * stride + stride // 2
        ys = torch.arange(height, device=device, dtype=torch.float32) * stride + stride // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    return locations


def centerness_target(ltrb: Tensor) -> Tensor:
    """``sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b))`` for ``(R, 4)`` distances -> ``(R,)``."""
    left_right = ltrb[:, [0, 2]]
    top_bottom = ltrb[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values.clamp(min=1e-6)) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()


@dataclass
class FCOSTargets:
    """Targets of one batch over all levels, ``R`` = total number of locations.

    Attributes:
        labels: ``(N, R)`` contiguous class index, or ``num_classes`` for background.
        reg_targets: ``(N, R, 4)`` distances ``(l, t, r, b)`` to the assigned box, divided by the
            stride of the location's level (zeros at background).
        matched_gt: ``(N, R)`` index of the assigned box in the image's targets, -1 at background.
    """

    labels: Tensor
    reg_targets: Tensor
    matched_gt: Tensor


def assign_fcos_targets(
    locations: list[Tensor],
    strides: Sequence[int],
    targets: list[dict[str, Tensor]],
    num_classes: int,
    *,
    sizes_of_interest: Sequence[tuple[float, float]] = DEFAULT_SIZES_OF_INTEREST,
    center_sampling_radius: float = FCOS_CENTER_SAMPLING_RADIUS,
) -> FCOSTargets:
    """Assign every location of every level to at most one ground-truth box.

    A location is a candidate for a box when it lies inside the box's centre region (the box
    centre +- ``radius * stride``, clipped to the box; the whole box when the radius is 0) and the
    largest of its four distances to the box sides falls within its level's size of interest.
    Among candidates, the box with the smallest area wins (the first such box on a tie).

    Images are processed together, their boxes padded to the largest count ``M``; the
    ``(n, R, M)`` candidate tests run on groups of images small enough to keep each such tensor
    under :data:`ASSIGNMENT_CHUNK_ELEMENTS` elements.

    Args:
        locations: per level ``(Hi*Wi, 2)`` from :func:`compute_locations`.
        strides: stride of each level.
        targets: per image ``{"boxes": (M, 4) xyxy, "labels": (M,)}``.
        num_classes: K; background locations get label K.
        sizes_of_interest: ``[lo, hi]`` range (both ends included) of max regression distance per level.
        center_sampling_radius: centre-region radius in strides; 0 disables centre sampling.
    """
    if len(sizes_of_interest) < len(locations):
        raise ValueError(f"{len(locations)} levels but only {len(sizes_of_interest)} sizes of interest")
    points = torch.cat(locations, dim=0)
    device = points.device
    num_points = points.shape[0]
    level_stride = torch.cat(
        [torch.full((len(loc),), float(s), device=device) for loc, s in zip(locations, strides)]
    )
    level_range = torch.cat(
        [
            torch.tensor(rng, device=device, dtype=torch.float32).expand(len(loc), 2)
            for loc, rng in zip(locations, sizes_of_interest)
        ]
    )
    num_images = len(targets)
    labels = torch.full((num_images, num_points), num_classes, dtype=torch.long, device=device)
    reg_targets = torch.zeros(num_images, num_points, 4, device=device)
    matched_gt = torch.full((num_images, num_points), -1, dtype=torch.long, device=device)
    max_boxes = max((len(target["boxes"]) for target in targets), default=0)
    if max_boxes == 0:
        return FCOSTargets(labels=labels, reg_targets=reg_targets, matched_gt=matched_gt)

    # Padded boxes are never candidates (``valid`` is False), so their coordinates do not matter.
    boxes = torch.zeros(num_images, max_boxes, 4, device=device)
    gt_labels = torch.full((num_images, max_boxes), num_classes, dtype=torch.long, device=device)
    valid = torch.zeros(num_images, max_boxes, dtype=torch.bool, device=device)
    for index, target in enumerate(targets):
        count = len(target["boxes"])
        boxes[index, :count] = target["boxes"].to(device=device, dtype=torch.float32)
        gt_labels[index, :count] = target["labels"].to(device=device, dtype=torch.long)
        valid[index, :count] = True

    chunk = max(1, ASSIGNMENT_CHUNK_ELEMENTS // (num_points * max_boxes))
    for first in range(0, num_images, chunk):
        images = slice(first, first + chunk)
        gt_index, positive = _match_locations(
            points,
            level_stride,
            level_range,
            boxes[images],
            valid[images],
            center_sampling_radius=center_sampling_radius,
        )
        labels[images] = torch.where(positive, gt_labels[images].gather(1, gt_index), num_classes)
        matched_gt[images] = torch.where(positive, gt_index, -1)
        assigned = boxes[images].gather(1, gt_index[..., None].expand(-1, -1, 4))  # (n, R, 4)
        xs, ys = points[:, 0], points[:, 1]
        ltrb = torch.stack(
            [xs - assigned[..., 0], ys - assigned[..., 1], assigned[..., 2] - xs, assigned[..., 3] - ys], dim=2
        )
        reg_targets[images] = (ltrb / level_stride[:, None]).masked_fill(~positive[..., None], 0.0)
    return FCOSTargets(labels=labels, reg_targets=reg_targets, matched_gt=matched_gt)


def _match_locations(
    points: Tensor,
    level_stride: Tensor,
    level_range: Tensor,
    boxes: Tensor,
    valid: Tensor,
    *,
    center_sampling_radius: float,
) -> tuple[Tensor, Tensor]:
    """The smallest candidate box of every location for a group of ``n`` images.

    Args:
        points: ``(R, 2)`` location centres.
        level_stride: ``(R,)`` stride of each location's level.
        level_range: ``(R, 2)`` size-of-interest range of each location's level.
        boxes: ``(n, M, 4)`` padded xyxy boxes.
        valid: ``(n, M)`` False at padding.

    Returns:
        ``(n, R)`` index of the chosen box (meaningless where not positive) and ``(n, R)``
        whether the location has a candidate at all.
    """
    # Every (n, R, M) tensor below is built from the four side distances separately: stacking
    # them into one (n, R, M, 4) tensor costs more than the comparisons themselves.
    xs = points[:, 0].view(1, -1, 1)
    ys = points[:, 1].view(1, -1, 1)
    x1, y1, x2, y2 = (boxes[..., side].unsqueeze(1) for side in range(4))  # (n, 1, M) each
    left, top, right, bottom = xs - x1, ys - y1, x2 - xs, y2 - ys
    max_distance = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
    candidate = (max_distance >= level_range[:, 0:1]) & (max_distance <= level_range[:, 1:2])
    del max_distance
    if center_sampling_radius > 0:
        del left, top, right, bottom
        centre_x = (x1 + x2) / 2
        centre_y = (y1 + y2) / 2
        radius = (level_stride * center_sampling_radius).view(1, -1, 1)
        candidate &= xs - torch.maximum(centre_x - radius, x1) > 0
        candidate &= ys - torch.maximum(centre_y - radius, y1) > 0
        candidate &= torch.minimum(centre_x + radius, x2) - xs > 0
        candidate &= torch.minimum(centre_y + radius, y2) - ys > 0
    else:
        candidate &= torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
    candidate &= valid.unsqueeze(1)
    areas = ((x2 - x1) * (y2 - y1)).expand_as(candidate).masked_fill(~candidate, float("inf"))
    min_area, gt_index = areas.min(dim=2)
    return gt_index, torch.isfinite(min_area)
