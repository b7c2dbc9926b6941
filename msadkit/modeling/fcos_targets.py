"""FCOS location grid and target assignment (METHODS.md §1.2, §1.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_SIZES_OF_INTEREST",
    "FCOSTargets",
    "compute_locations",
    "assign_fcos_targets",
    "centerness_target",
]

DEFAULT_SIZES_OF_INTEREST: tuple[tuple[float, float], ...] = (
    (-1.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, float("inf")),
)


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
    center_sampling_radius: float = 1.5,
) -> FCOSTargets:
    """Assign every location of every level to at most one ground-truth box.

    A location is a candidate for a box when it lies inside the box's centre region (the box
    centre +- ``radius * stride``, clipped to the box; the whole box when the radius is 0) and the
    largest of its four distances to the box sides falls within its level's size of interest.
    Among candidates, the box with the smallest area wins.

    Args:
        locations: per level ``(Hi*Wi, 2)`` from :func:`compute_locations`.
        strides: stride of each level.
        targets: per image ``{"boxes": (M, 4) xyxy, "labels": (M,)}``.
        num_classes: K; background locations get label K.
        sizes_of_interest: ``(lo, hi]`` range of max regression distance per level.
        center_sampling_radius: centre-region radius in strides; 0 disables centre sampling.
    """
    if len(sizes_of_interest) < len(locations):
        raise ValueError(f"{len(locations)} levels but only {len(sizes_of_interest)} sizes of interest")
    points = torch.cat(locations, dim=0)
    device = points.device
    level_stride = torch.cat(
        [torch.full((len(loc),), float(s), device=device) for loc, s in zip(locations, strides)]
    )
    level_range = torch.cat(
        [
            torch.tensor(rng, device=device, dtype=torch.float32).expand(len(loc), 2)
            for loc, rng in zip(locations, sizes_of_interest)
        ]
    )
    num_points = points.shape[0]
    labels_out, reg_out, matched_out = [], [], []
    for target in targets:
        boxes = target["boxes"].to(device=device, dtype=torch.float32)
        gt_labels = target["labels"].to(device)
        if boxes.numel() == 0:
            labels_out.append(torch.full((num_points,), num_classes, dtype=torch.long, device=device))
            reg_out.append(torch.zeros(num_points, 4, device=device))
            matched_out.append(torch.full((num_points,), -1, dtype=torch.long, device=device))
            continue
        xs, ys = points[:, 0:1], points[:, 1:2]
        ltrb = torch.stack(
            [xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys], dim=2
        )  # (R, M, 4)
        if center_sampling_radius > 0:
            centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
            centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
            radius = level_stride[:, None] * center_sampling_radius
            region = torch.stack(
                [
                    torch.maximum(centre_x - radius, boxes[:, 0]),
                    torch.maximum(centre_y - radius, boxes[:, 1]),
                    torch.minimum(centre_x + radius, boxes[:, 2]),
                    torch.minimum(centre_y + radius, boxes[:, 3]),
                ],
                dim=2,
            )
            region_ltrb = torch.stack(
                [xs - region[..., 0], ys - region[..., 1], region[..., 2] - xs, region[..., 3] - ys], dim=2
            )
            inside = region_ltrb.min(dim=2).values > 0
        else:
            inside = ltrb.min(dim=2).values > 0
        max_distance = ltrb.max(dim=2).values
        in_range = (max_distance >= level_range[:, 0:1]) & (max_distance <= level_range[:, 1:2])
        areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(num_points, -1)
        areas = areas.masked_fill(~(inside & in_range), float("inf"))
        min_area, gt_index = areas.min(dim=1)
        positive = torch.isfinite(min_area)
        labels = gt_labels[gt_index].clone()
        labels[~positive] = num_classes
        reg = ltrb[torch.arange(num_points, device=device), gt_index] / level_stride[:, None]
        reg[~positive] = 0
        labels_out.append(labels)
        reg_out.append(reg)
        matched_out.append(torch.where(positive, gt_index, torch.full_like(gt_index, -1)))
    return FCOSTargets(
        labels=torch.stack(labels_out), reg_targets=torch.stack(reg_out), matched_gt=torch.stack(matched_out)
    )
