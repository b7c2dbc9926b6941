"""FLOP counting and MSAD capacity, checked against hand formulas and published numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msadkit.errors import ConfigError
from msadkit.modeling.backbones.capacity import backbone_gmacs, count_flops, count_gmacs, msad_capacity

WIDTHS = (1.0, 0.75, 0.5, 0.25)
# slimmable_networks README / METHODS §1.10: ImageNet 224x224 GMACs, classifier excluded.
PUBLISHED_IMAGENET_GMACS = {1.0: 4.087, 0.75: 2.321, 0.5: 1.051, 0.25: 0.278}
# METHODS §1.10 exact counts and the MSAD README's rounded capacity column.
EXACT_CAPACITY = {
    "teacher": {1.0: 1.252, 0.75: 0.711, 0.5: 0.322, 0.25: 0.085},
    "student": {1.0: 0.252, 0.75: 0.143, 0.5: 0.065, 0.25: 0.017},
}
README_CAPACITY = {
    "teacher": {1.0: 1.25, 0.75: 0.70, 0.5: 0.31, 0.25: 0.08},
    "student": {1.0: 0.25, 0.75: 0.14, 0.5: 0.06, 0.25: 0.02},
}


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def analytic_resnet_macs(width: float, height: int, width_px: int, blocks=(3, 4, 6, 3)) -> int:
    """Bottom-up ResNet MACs from the channel rule of METHODS §1.7, written independently."""
    stem = int(64 * width)
    h, w = conv_out(height, 7, 2, 3), conv_out(width_px, 7, 2, 3)
    macs = 3 * stem * 49 * h * w
    h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)  # max pool, not counted
    c_in = stem
    for stage, (base, count) in enumerate(zip((64, 128, 256, 512), blocks)):
        c_out = int(base * 4 * width)
        mid = c_out // 4
        for index in range(count):
            stride = 2 if index == 0 and stage > 0 else 1
            macs += c_in * mid * h * w  # 1x1 reduce at the input resolution
            h2, w2 = conv_out(h, 3, stride, 1), conv_out(w, 3, stride, 1)
            macs += mid * mid * 9 * h2 * w2  # 3x3 carries the stride
            macs += mid * c_out * h2 * w2  # 1x1 expand
            if stride != 1 or c_in != c_out:
                macs += c_in * c_out * h2 * w2  # projection shortcut
            h, w, c_in = h2, w2, c_out
    return macs


def test_single_conv_flops_match_hand_formula():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False)
    x = torch.zeros(2, 3, 17, 19)
    h_out, w_out = conv_out(17, 3, 2, 1), conv_out(19, 3, 2, 1)
    assert (h_out, w_out) == (9, 10)
    macs = 2 * 8 * h_out * w_out * 3 * 3 * 3  # N * C_out * H_out * W_out * C_in * k * k
    assert count_flops(conv, x) == pytest.approx(2 * macs / 1e9, rel=1e-12)
    assert count_gmacs(conv, x) == pytest.approx(macs / 1e9, rel=1e-12)


def test_grouped_conv_and_linear():
    conv = nn.Conv2d(8, 16, kernel_size=1, groups=4)
    x = torch.zeros(1, 8, 5, 6)
    assert count_gmacs(conv, x) == pytest.approx(16 * 5 * 6 * (8 // 4) / 1e9, rel=1e-12)
    linear = nn.Linear(5, 7)
    assert count_gmacs(linear, torch.zeros(3, 5)) == pytest.approx(3 * 5 * 7 / 1e9, rel=1e-12)


def test_count_flops_leaves_mode_and_bn_statistics_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = model[1].running_mean.clone()
    count_flops(model, torch.randn(2, 3, 8, 8) + 5.0)
    assert model.training and model[1].training
    torch.testing.assert_close(model[1].running_mean, before)
    assert model[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize("width", WIDTHS)
def test_slimmable_imagenet_gmacs_match_published_numbers(width):
    gmacs = backbone_gmacs(width, height=224, width_px=224)
    published = PUBLISHED_IMAGENET_GMACS[width]
    assert gmacs == pytest.approx(published, rel=0.01)
    assert abs(gmacs - published) < 0.0006  # exact to the three published decimals
    assert gmacs == pytest.approx(analytic_resnet_macs(width, 224, 224) / 1e9, rel=1e-12)


@pytest.mark.parametrize("width", WIDTHS)
def test_backbone_gmacs_at_detection_sizes_match_analytic_count(width):
    for height, width_px in ((800, 1333), (400, 667)):
        expected = analytic_resnet_macs(width, height, width_px) / 1e9
        assert backbone_gmacs(width, height=height, width_px=width_px) == pytest.approx(expected, rel=1e-12)


def test_plain_resnets():
    assert backbone_gmacs(None) == pytest.approx(backbone_gmacs(1.0), rel=1e-12)
    r101 = analytic_resnet_macs(1.0, 800, 1333, blocks=(3, 4, 23, 3)) / 1e9
    assert backbone_gmacs(None, depth=101) == pytest.approx(r101, rel=1e-12)


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("width", WIDTHS)
def test_msad_capacity_matches_exact_and_readme_values(role, width):
    capacity = msad_capacity(width, role)
    assert abs(capacity - EXACT_CAPACITY[role][width]) < 0.0006
    assert abs(capacity - README_CAPACITY[role][width]) < 0.015
    # The README's idealisation: conv MACs scale with w^2, low resolution has 1/4 of the pixels.
    ideal = width**2 * (1.25 if role == "teacher" else 0.25)
    assert capacity == pytest.approx(ideal, abs=0.01)


def test_capacity_roles_are_consistent():
    for width in (0.5, 1.0):
        high, low = msad_capacity(width, "high"), msad_capacity(width, "low")
        assert msad_capacity(width, "teacher") == pytest.approx(high + low)
        assert msad_capacity(width, "student") == low
    assert msad_capacity(1.0, "high") == pytest.approx(1.0)
    assert msad_capacity(None, "teacher") == pytest.approx(msad_capacity(1.0, "teacher"))


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="role"):
        msad_capacity(0.5, "fused")
    with pytest.raises(ConfigError, match="width"):
        backbone_gmacs(0.3)
    with pytest.raises(ConfigError, match="depth"):
        backbone_gmacs(0.5, depth=101)
    with pytest.raises(ConfigError, match="depth"):
        backbone_gmacs(None, depth=34)
