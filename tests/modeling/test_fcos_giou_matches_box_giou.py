"""FCOS's GIoU loss on (l, t, r, b) distances equals 1 - torchvision's GIoU of the same boxes as corners."""

from __future__ import annotations

import torch
from torchvision.ops import generalized_box_iou

from msadkit.modeling.detectors.fcos_losses import ltrb_giou_loss


def _corners(ltrb):
    # Distances from a shared point at the origin to the four sides.
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def test_random_boxes_small_and_large_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    for scale in (0.2, 1.0, 50.0):
        # Enclosing boxes smaller than one unit at the smallest scale, with all four sides different.
        pred = (torch.rand(200, 4, generator=gen, dtype=torch.float64) + 0.05) * scale
        target = (torch.rand(200, 4, generator=gen, dtype=torch.float64) + 0.05) * scale
        expected = 1 - generalized_box_iou(_corners(pred), _corners(target)).diagonal()
        torch.testing.assert_close(ltrb_giou_loss(pred, target), expected)


def test_boxes_touching_at_the_point_by_hand():
    # pred spans x in [0, 2], y in [0, 1]; target x in [-1, 0], y in [-1, 0]: no overlap, union 3,
    # enclosing box 3 x 2 = 6, GIoU = 0 - (6 - 3) / 6 = -0.5, loss 1.5.
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(ltrb_giou_loss(pred, target), torch.tensor([1.5]))
