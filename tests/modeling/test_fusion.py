import math

import pytest
import torch

from msadkit.modeling.detectors.fusion import CrossingFeatureFusion, fuse_pyramids


def _pair(n: int = 2, c: int = 8, h: int = 4, w: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=gen), torch.randn(n, c, h, w, generator=gen)


def test_layer_shapes_have_no_bias_and_follow_reduction():
    fusion = CrossingFeatureFusion(256, reduction=16)
    params = dict(fusion.named_parameters())
    assert set(params) == {"squeeze.weight", "score.weight"}
    assert params["squeeze.weight"].shape == (32, 512)
    assert params["score.weight"].shape == (2, 32)


def test_init_is_kaiming_uniform_with_a_1():
    torch.manual_seed(0)
    fusion = CrossingFeatureFusion(256, reduction=16)
    for weight, fan_in in ((fusion.squeeze.weight, 512), (fusion.score.weight, 32)):
        bound = math.sqrt(3.0 / fan_in)  # gain sqrt(2 / (1 + a^2)) = 1, bound = gain * sqrt(3 / fan_in)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.9 * bound
    # A uniform(-b, b) sample has std b / sqrt(3); with 16384 samples it is close.
    w1 = fusion.squeeze.weight
    assert w1.std().item() == pytest.approx(math.sqrt(3.0 / 512) / math.sqrt(3.0), rel=0.05)


def test_weights_are_probabilities_per_image():
    torch.manual_seed(1)
    fusion = CrossingFeatureFusion(8, reduction=2)
    high, low = _pair(n=3)
    fused, weights = fusion(high, low, return_weights=True)
    assert fused.shape == high.shape
    assert weights.shape == (3, 2)
    assert torch.all(weights > 0) and torch.all(weights < 1)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))


def test_output_is_weighted_sum_of_inputs():
    torch.manual_seed(2)
    fusion = CrossingFeatureFusion(8, reduction=2)
    high, low = _pair(n=2)
    fused, weights = fusion(high, low, return_weights=True)
    expected = weights[:, 0, None, None, None] * high + weights[:, 1, None, None, None] * low
    torch.testing.assert_close(fused, expected)


def test_equal_inputs_come_back_exactly():
    torch.manual_seed(3)
    fusion = CrossingFeatureFusion(8, reduction=2)
    x, _ = _pair(n=2)
    _, weights = fusion(x, x.clone(), return_weights=True)
    # The weights are not trivial, so exactness is not a 1.0 * x artefact.
    assert torch.all((weights - 0.5).abs() > 1e-4)
    assert torch.equal(fusion(x, x.clone()), x)


def test_zeroed_score_layer_gives_plain_average():
    torch.manual_seed(4)
    fusion = CrossingFeatureFusion(8, reduction=2)
    with torch.no_grad():
        fusion.score.weight.zero_()
    high, low = _pair(n=2)
    fused, weights = fusion(high, low, return_weights=True)
    assert torch.equal(weights, torch.full((2, 2), 0.5))
    # A few float32 rounding units of the inputs' scale (w * high + w * low, maybe fused-multiply-added).
    scale = float(torch.maximum(high.abs().max(), low.abs().max()))
    torch.testing.assert_close(fused, (high + low) / 2, rtol=0, atol=4 * torch.finfo(torch.float32).eps * scale)


def test_weights_differ_between_images_and_do_not_depend_on_batch():
    torch.manual_seed(5)
    fusion = CrossingFeatureFusion(8, reduction=2)
    high, low = _pair(n=2, seed=5)
    high[1] = high[1] * 3.0 + 1.0  # make the second image clearly different
    _, weights = fusion(high, low, return_weights=True)
    assert not torch.allclose(weights[0], weights[1], atol=1e-4)
    for i in range(2):
        _, alone = fusion(high[i : i + 1], low[i : i + 1], return_weights=True)
        torch.testing.assert_close(alone[0], weights[i])


def test_gradients_reach_both_layers_and_both_inputs():
    torch.manual_seed(6)
    fusion = CrossingFeatureFusion(8, reduction=2)
    high, low = _pair(n=2, seed=6)
    high.requires_grad_(True)
    low.requires_grad_(True)
    target = torch.randn_like(high)
    loss = (fusion(high, low) - target).square().mean()
    loss.backward()
    for tensor in (fusion.squeeze.weight, fusion.score.weight, high, low):
        assert tensor.grad is not None
        assert tensor.grad.abs().sum() > 0


def test_training_the_gate_moves_weight_toward_the_better_input():
    # high equals the target, low is noise: minimising the error must raise w_high.
    torch.manual_seed(7)
    fusion = CrossingFeatureFusion(4, reduction=2)
    high, low = _pair(n=2, c=4, seed=7)
    _, before = fusion(high, low, return_weights=True)
    optimizer = torch.optim.SGD(fusion.parameters(), lr=0.5)
    for _ in range(30):
        optimizer.zero_grad()
        (fusion(high, low) - high).square().mean().backward()
        optimizer.step()
    _, after = fusion(high, low, return_weights=True)
    assert torch.all(after[:, 0] > before[:, 0])


def test_mismatched_shapes_raise_with_both_shapes():
    fusion = CrossingFeatureFusion(8, reduction=2)
    high = torch.zeros(1, 8, 4, 4)
    low = torch.zeros(1, 8, 4, 5)
    with pytest.raises(ValueError, match=r"\(1, 8, 4, 4\).*\(1, 8, 4, 5\)"):
        fusion(high, low)


def test_wrong_channel_count_raises():
    fusion = CrossingFeatureFusion(8, reduction=2)
    with pytest.raises(ValueError, match="8 channels"):
        fusion(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))


def test_hand_computed_case_c4_reduction2():
    fusion = CrossingFeatureFusion(4, reduction=2)
    assert fusion.squeeze.weight.shape == (4, 8)
    # high: channel 0 varies spatially (mean 1), channels 1..3 are constants 2, 3, 4; low is -1.
    high = torch.tensor(
        [[[[0.0, 2.0], [-1.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]], [[3.0, 3.0], [3.0, 3.0]], [[4.0, 4.0], [4.0, 4.0]]]]
    )
    low = torch.full((1, 4, 2, 2), -1.0)
    # pooled g = [1, 2, 3, 4, -1, -1, -1, -1]
    w1 = torch.zeros(4, 8)
    w1[0, 0] = 1.0  # -> g0 = 1
    w1[1, 4] = 1.0  # -> g4 = -1, cut by relu
    w1[2, 1] = w1[2, 2] = 0.5  # -> (2 + 3) / 2 = 2.5
    w1[3, 3] = -1.0  # -> -4, cut by relu
    # hidden after relu = [1, 0, 2.5, 0]
    w2 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-1.0, 7.0, 0.2, 9.0]])
    # logits = [1, -1 + 0.2 * 2.5] = [1, -0.5]
    with torch.no_grad():
        fusion.squeeze.weight.copy_(w1)
        fusion.score.weight.copy_(w2)
    fused, weights = fusion(high, low, return_weights=True)

    denominator = math.exp(1.0) + math.exp(-0.5)
    w_high = math.exp(1.0) / denominator
    w_low = math.exp(-0.5) / denominator
    assert w_high == pytest.approx(0.8175744761936437)
    torch.testing.assert_close(weights, torch.tensor([[w_high, w_low]]))
    torch.testing.assert_close(fused, w_high * high + w_low * low)


def test_fuse_pyramids_applies_the_shared_module_per_level():
    torch.manual_seed(8)
    fusion = CrossingFeatureFusion(4, reduction=2)
    sizes = [(16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]
    gen = torch.Generator().manual_seed(8)
    highs = [torch.randn(2, 4, h, w, generator=gen) for h, w in sizes]
    lows = [torch.randn(2, 4, h, w, generator=gen) for h, w in sizes]
    fused, weights = fuse_pyramids(fusion, highs, lows, return_weights=True)
    assert len(fused) == 5
    assert weights.shape == (2, 5, 2)
    for level in range(5):
        expected, expected_w = fusion(highs[level], lows[level], return_weights=True)
        assert fused[level].shape == highs[level].shape
        torch.testing.assert_close(fused[level], expected)
        torch.testing.assert_close(weights[:, level], expected_w)
    plain = fuse_pyramids(fusion, highs, lows)
    assert isinstance(plain, list)
    for a, b in zip(plain, fused):
        torch.testing.assert_close(a, b)


def test_fuse_pyramids_rejects_misaligned_input():
    fusion = CrossingFeatureFusion(4, reduction=2)
    highs = [torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 2)]
    lows = [torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 2, 3)]
    with pytest.raises(ValueError, match=r"level pair 1.*\(1, 4, 2, 2\).*\(1, 4, 2, 3\)"):
        fuse_pyramids(fusion, highs, lows)
    with pytest.raises(ValueError, match="2 levels.*1"):
        fuse_pyramids(fusion, highs, lows[:1])
