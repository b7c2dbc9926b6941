"""GID feature imitation accepts any run of consecutive powers of two as strides, stride 1 included."""

from __future__ import annotations

import pytest
import torch

from msadkit.distill.gid.losses import gid_feature_loss


def test_strides_from_one_are_levels_from_zero():
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(1, 2, 16, 16, generator=gen), torch.randn(1, 2, 8, 8, generator=gen)]
    teacher = [s + 1.0 for s in student]
    boxes = [torch.tensor([[2.0, 2.0, 6.0, 6.0]])]
    loss, student_rois, _ = gid_feature_loss(student, teacher, boxes, [1, 2], output_size=2)
    # Teacher = student + 1 everywhere, so every pooled cell differs by exactly 1: the loss is
    # sum over channels and cells of 1 / (1 instance * 2 * 2) = 2 channels.
    assert loss.item() == pytest.approx(2.0)
    assert student_rois[0].shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="consecutive powers of two"):
        gid_feature_loss(student, teacher, boxes, [3, 6], output_size=2)


def test_a_single_level_is_enough():
    gen = torch.Generator().manual_seed(1)
    student = [torch.randn(2, 3, 8, 8, generator=gen)]
    teacher = [s - 0.5 for s in student]
    boxes = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, boxes, [8], output_size=2)
    # Every pooled cell differs by 0.5: sum of 0.25 over 3 channels and 4 cells, per instance.
    assert loss.item() == pytest.approx(3 * 4 * 0.25 * 2 / (2 * 2 * 2))
    assert [r.shape for r in student_rois] == [(1, 3, 2, 2), (1, 3, 2, 2)]


def test_a_channel_mismatch_names_its_fpn_level():
    # Strides 8, 16 are levels 3 and 4; only the second level's widths differ.
    student = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 4, 4)]
    teacher = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    with pytest.raises(ValueError, match="level 4 has 3 student channels and 2 teacher channels"):
        gid_feature_loss(student, teacher, [torch.zeros(0, 4)], [8, 16], output_size=2)
