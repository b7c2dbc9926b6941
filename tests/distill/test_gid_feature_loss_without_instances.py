"""GID feature imitation on a batch without any GI: zero loss, and ROI lists shaped and typed as with GIs."""

from __future__ import annotations

import torch

from msadkit.distill.gid.losses import gid_feature_loss


def _maps(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, 8, 8, generator=gen).to(dtype).requires_grad_(True) for _ in range(2)]


def test_no_instance_gives_a_zero_loss_and_empty_fp32_rois_like_the_pooled_ones():
    # bf16 maps, as under autocast: pooled ROIs are fp32 (the maps are pooled in fp32), and the
    # empty per-image ROIs of a batch without GIs must be the same dtype for the relation loss.
    student, teacher = _maps(torch.bfloat16), _maps(torch.bfloat16)
    no_boxes = [torch.zeros(0, 4), torch.zeros(0, 4)]
    loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, no_boxes, [8, 16], output_size=2)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert student[0].grad is not None and torch.count_nonzero(student[0].grad) == 0
    for rois in (student_rois, teacher_rois):
        assert len(rois) == 2
        for per_image in rois:
            assert per_image.shape == (0, 3, 2, 2) and per_image.dtype == torch.float32

    one_box = [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    _, pooled, _ = gid_feature_loss(_maps(torch.bfloat16), _maps(torch.bfloat16), one_box, [8, 16], output_size=2)
    assert pooled[0].shape == (1, 3, 2, 2) and pooled[0].dtype == torch.float32
    assert pooled[1].shape == (0, 3, 2, 2) and pooled[1].dtype == torch.float32
