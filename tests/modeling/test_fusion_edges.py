"""C-FF on the smallest pyramids: one level pair works, no level pair is an error."""

from __future__ import annotations

import pytest
import torch

from msadkit.modeling.detectors.fusion import CrossingFeatureFusion, fuse_pyramids


def test_a_single_level_pair_is_fused_like_the_module_alone():
    torch.manual_seed(0)
    fusion = CrossingFeatureFusion(4, reduction=2)
    high, low = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    fused, weights = fuse_pyramids(fusion, [high], [low], return_weights=True)
    expected, expected_weights = fusion(high, low, return_weights=True)
    assert len(fused) == 1
    torch.testing.assert_close(fused[0], expected)
    assert weights.shape == (2, 1, 2)
    torch.testing.assert_close(weights[:, 0], expected_weights)


def test_no_level_pair_is_an_error_not_an_empty_pyramid():
    fusion = CrossingFeatureFusion(4, reduction=2)
    for return_weights in (False, True):
        with pytest.raises(ValueError, match="at least one level pair"):
            fuse_pyramids(fusion, [], [], return_weights=return_weights)


def test_weights_in_another_precision_than_the_maps_give_the_maps_precision(monkeypatch):
    # CUDA autocast runs softmax in fp32 while the maps are fp16/bf16: the fusion must cast the
    # weights to the maps' dtype (lerp refuses mixed dtypes). Fixed weights stand in for the gate.
    fusion = CrossingFeatureFusion(2, reduction=1)
    monkeypatch.setattr(fusion, "fusion_weights", lambda high, low: torch.tensor([[0.25, 0.75]]))
    high = torch.tensor([[[[4.0]], [[8.0]]]], dtype=torch.bfloat16)
    low = torch.tensor([[[[0.0]], [[-4.0]]]], dtype=torch.bfloat16)
    fused = fusion(high, low)
    assert fused.dtype == torch.bfloat16
    # 0.25 * 4 + 0.75 * 0 = 1 and 0.25 * 8 + 0.75 * (-4) = -1, exact in bf16.
    assert fused.flatten().tolist() == [1.0, -1.0]


def test_shape_error_starts_with_what_cff_needs():
    fusion = CrossingFeatureFusion(4, reduction=2)
    with pytest.raises(ValueError, match=r"^C-FF needs high and low maps of identical shape \(N, C, H, W\), got high"):
        fusion(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))


def test_defaults_are_the_papers_fpn_width_and_squeeze_ratio():
    fusion = CrossingFeatureFusion()
    assert (fusion.channels, fusion.reduction) == (256, 16)
    assert fusion.squeeze.weight.shape == (512 // 16, 512)


def test_one_channel_and_no_squeeze_are_the_smallest_valid_sizes():
    fusion = CrossingFeatureFusion(1, reduction=1)
    assert fusion.squeeze.weight.shape == (2, 2)
    fused = fusion(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert torch.equal(fused, torch.ones(1, 1, 2, 2))
    # A squeeze wider than 2C still keeps one hidden unit.
    assert CrossingFeatureFusion(2, reduction=64).squeeze.weight.shape == (1, 4)
    with pytest.raises(ValueError, match="channels must be >= 1, got 0"):
        CrossingFeatureFusion(0)
    with pytest.raises(ValueError, match="reduction must be >= 1, got 0"):
        CrossingFeatureFusion(4, reduction=0)
