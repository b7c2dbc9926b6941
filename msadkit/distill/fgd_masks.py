"""Foreground and background masks of FGD (Yang et al., CVPR 2022) on one pyramid level.

Ground-truth boxes in input pixels are mapped onto a ``(H, W)`` map by the ratio of the map's size
to the size of the image it covers, never by an assumed stride: a low-resolution student's level
``l`` covers the same image as the teacher's level ``l + 1``, and a padded batch is covered whole.

A cell inside a box gets the scale weight ``1 / (h * w)`` of the box (``h``, ``w`` in cells); a
cell inside several boxes keeps the largest weight, i.e. the smallest box. Cells outside every box
form the background, weighted ``1 / N_bg`` with ``N_bg`` the number of such cells of the image.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MASK_EXTENTS", "box_cell_ranges", "fgd_masks"]

# "inclusive": the official code's cells floor(x1)..ceil(x2) and floor(y1)..ceil(y2), both ends
# included, and weight 1 / (number of those cells). "overlap": the cells the box overlaps,
# floor(x1)..ceil(x2) - 1, and weight 1 / (their number), the paper's "(i, j) in r".
MASK_EXTENTS = ("inclusive", "overlap")


def box_cell_ranges(
    boxes: Tensor, map_size: tuple[int, int], image_size: tuple[float, float], *, extent: str
) -> Tensor:
    """First and last (included) row and column of each box on the map, unclipped.

    Args:
        boxes: ``(M, 4)`` ``(x1, y1, x2, y2)`` in pixels of an image of ``image_size``.
        map_size: ``(H, W)`` of the map covering that image.
        image_size: ``(height, width)`` of the image in pixels.
        extent: one of :data:`MASK_EXTENTS`.

    Returns:
        ``(M, 4)`` int64 ``(row_first, row_last, col_first, col_last)``; rows or columns outside
        ``[0, H)`` / ``[0, W)`` may appear (they count in the scale weight but cover no cell).
    """
    if extent not in MASK_EXTENTS:
        raise ValueError(f"extent must be one of {MASK_EXTENTS}, got {extent!r}")
    height, width = map_size
    image_h, image_w = image_size
    # Multiplying first keeps a box edge on a cell border exactly on it (992 * 43 / 1376 is 31.0,
    # 992 / 1376 * 43 is 30.999999999999996), so floor and ceil do not gain or lose a cell by rounding.
    x1 = boxes[:, 0] * width / image_w
    x2 = boxes[:, 2] * width / image_w
    y1 = boxes[:, 1] * height / image_h
    y2 = boxes[:, 3] * height / image_h
    row_first, col_first = torch.floor(y1), torch.floor(x1)
    row_last, col_last = torch.ceil(y2), torch.ceil(x2)
    if extent == "overlap":
        # A box ending exactly on a cell border does not enter the next cell; a degenerate box
        # still holds the cell it lies in.
        row_last = torch.maximum(row_last - 1, row_first)
        col_last = torch.maximum(col_last - 1, col_first)
    return torch.stack([row_first, row_last, col_first, col_last], dim=1).long()


def fgd_masks(
    boxes: list[Tensor],
    map_size: tuple[int, int],
    image_sizes: list[tuple[float, float]],
    *,
    extent: str = "inclusive",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Scale-weighted foreground mask and normalised background mask of every image.

    Args:
        boxes: per image ``(M_i, 4)`` boxes in pixels; ``M_i`` may be 0.
        map_size: ``(H, W)`` of the level.
        image_sizes: per image ``(height, width)`` of the pixels the map covers (the padded batch).
        extent: one of :data:`MASK_EXTENTS`.
        dtype: dtype of the masks.

    Returns:
        ``fg (N, H, W)``: ``max`` over the boxes holding a cell of ``1 / (rows * cols)`` of the box,
        0 elsewhere. ``bg (N, H, W)``: ``1 / N_bg`` where ``fg`` is 0, else 0 (all zero when every
        cell is foreground).
    """
    height, width = map_size
    device = boxes[0].device if boxes else torch.device("cpu")
    fg = torch.zeros(len(boxes), height, width, dtype=dtype, device=device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    for index, (image_boxes, image_size) in enumerate(zip(boxes, image_sizes)):
        if image_boxes.numel() == 0:
            continue
        ranges = box_cell_ranges(image_boxes.to(torch.float64), map_size, image_size, extent=extent)
        row_first, row_last, col_first, col_last = ranges.unbind(dim=1)
        weight = 1.0 / ((row_last - row_first + 1) * (col_last - col_first + 1)).to(dtype)
        in_rows = (rows[None] >= row_first[:, None]) & (rows[None] <= row_last[:, None])  # (M, H)
        in_cols = (cols[None] >= col_first[:, None]) & (cols[None] <= col_last[:, None])  # (M, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        fg[index] = (inside.to(dtype) * weight[:, None, None]).amax(dim=0)
    background = (fg == 0).to(dtype)
    count = background.sum(dim=(1, 2), keepdim=True)
    bg = background / count.clamp(min=1.0)
    return fg, bg
