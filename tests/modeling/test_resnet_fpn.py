"""Norm factory, torchvision ResNet backbone and FPN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from msadkit.errors import CheckpointError, InputError
from msadkit.modeling.backbones.fpn import FPN, BackboneWithFPN
from msadkit.modeling.backbones.resnet import torchvision_resnet
from msadkit.modeling.backbones.slimmable import slimmable_resnet50
from msadkit.modeling.norm import FrozenBatchNorm2d, freeze_batchnorm, get_norm

SMALL_CHANNELS = {"res2": 8, "res3": 16, "res4": 32, "res5": 64}


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def fake_features(height: int, width: int, channels=SMALL_CHANNELS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Backbone-like maps: res<k> of size ceil(H / 2**k), as a ResNet produces them."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(1, c, math.ceil(height / 2**k), math.ceil(width / 2**k), generator=g)
        for name, c, k in zip(channels, channels.values(), range(2, 6))
    }


# ---------------------------------------------------------------------------------------------
# Norms


def test_frozen_batchnorm_formula():
    frozen = FrozenBatchNorm2d(3)
    frozen.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    frozen.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    frozen.running_mean.copy_(torch.tensor([1.0, -1.0, 0.0]))
    frozen.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    frozen.eps = 0.0
    x = torch.ones(1, 3, 1, 2)
    expected = torch.tensor([(1 - 1) / 2 * 1 + 0, (1 + 1) / 1 * 2 + 1, (1 - 0) / 0.5 * 0.5 - 1]).view(1, 3, 1, 1)
    frozen.train()  # frozen in training mode too
    torch.testing.assert_close(frozen(x), expected.expand(1, 3, 1, 2))
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_freeze_batchnorm_keeps_eval_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(4)))
    randomize_batchnorm(model, 0)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    frozen = freeze_batchnorm(model)
    assert isinstance(frozen[1], FrozenBatchNorm2d) and isinstance(frozen[3][0], FrozenBatchNorm2d)
    frozen.train()
    torch.testing.assert_close(frozen(x), expected)


def test_get_norm():
    assert isinstance(get_norm("BN", 8), nn.BatchNorm2d)
    assert isinstance(get_norm("SyncBN", 8), nn.SyncBatchNorm)
    assert isinstance(get_norm("FrozenBN", 8), FrozenBatchNorm2d)
    assert isinstance(get_norm("", 8), nn.Identity)
    # 32 groups when possible, otherwise the largest divisor below 32.
    assert [get_norm("GN", c).num_groups for c in (256, 64, 48, 32, 16, 7)] == [32, 32, 24, 16, 8, 1]
    with pytest.raises(ValueError, match="'IN'"):
        get_norm("IN", 8)


# ---------------------------------------------------------------------------------------------
# torchvision ResNet


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(reference, 1)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.eval()


def torchvision_stages(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_torchvision_weights_load_and_match(torchvision_weights, norm):
    path, reference = torchvision_weights
    model = torchvision_resnet(50, weights_path=path, norm=norm).eval()
    assert model.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert not hasattr(model, "fc")
    if norm == "FrozenBN":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model.layer3[4].bn2.running_var, reference.layer3[4].bn2.running_var)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        ours = model(x)
        expected = torchvision_stages(reference, x)
    assert list(ours) == ["res2", "res3", "res4", "res5"]
    for (name, tensor), ref, stride in zip(ours.items(), expected, (4, 8, 16, 32)):
        assert tensor.shape == (1, model.out_channels[name], 32 // stride, 64 // stride)
        torch.testing.assert_close(tensor, ref)


def test_torchvision_weights_that_do_not_fit(tmp_path, torchvision_weights):
    _, reference = torchvision_weights
    state = reference.state_dict()
    del state["layer2.1.conv2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["layer1.0.bn1.running_mean"] = torch.zeros(65)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        torchvision_resnet(50, weights_path=path)
    message = str(info.value)
    assert "broken.pth" in message
    for key in ["layer2.1.conv2.weight", "layer5.0.conv1.weight", "layer1.0.bn1.running_mean"]:
        assert key in message
    assert "fc." not in message


def test_torchvision_weights_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth"):
        torchvision_resnet(50, weights_path=tmp_path / "nothing.pth")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, wrapped)
    with pytest.raises(CheckpointError, match="wrapped.pth.*not tensors"):
        torchvision_resnet(50, weights_path=wrapped)


def test_torchvision_freeze_at():
    model = torchvision_resnet(50, norm="BN", freeze_at=2)
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    assert isinstance(model.bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(model.layer2[0].bn1, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="freeze_at"):
        torchvision_resnet(50, freeze_at=6)


def test_torchvision_depth_101_and_bad_arguments():
    model = torchvision_resnet(101)
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] == [3, 4, 23, 3]
    with pytest.raises(ValueError, match="34"):
        torchvision_resnet(34)
    with pytest.raises(ValueError, match="XN"):
        torchvision_resnet(50, norm="XN")


def test_backbone_rejects_bad_images():
    model = slimmable_resnet50(0.25)
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# FPN


def reference_fpn(fpn: FPN, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An independent top-down pass with index-based nearest upsampling (no norm)."""

    def conv(h, module, stride=1):
        return F.conv2d(h, module.weight, module.bias, stride=stride, padding=module.kernel_size[0] // 2)

    def upsample(h, size):
        rows = torch.arange(size[0]) * h.shape[-2] // size[0]
        cols = torch.arange(size[1]) * h.shape[-1] // size[1]
        return h[..., rows, :][..., cols]

    out, top = {}, None
    for k in (5, 4, 3, 2):
        if f"p{k}" not in fpn.lateral_convs:
            continue
        lateral = conv(features[f"res{k}"], fpn.lateral_convs[f"p{k}"])
        if top is not None:
            lateral = lateral + upsample(top, lateral.shape[-2:])
        top = lateral
        if f"p{k}" in fpn.output_convs:
            out[f"p{k}"] = conv(lateral, fpn.output_convs[f"p{k}"], 1)
    if fpn.p6 is not None:
        source = features["res5"] if fpn.top_block == "res5" else out["p5"]
        out["p6"] = conv(source, fpn.p6, 2)
        if fpn.p7 is not None:
            out["p7"] = conv(F.relu(out["p6"]), fpn.p7, 2)
    return out


@pytest.mark.parametrize("height,width", [(64, 96), (65, 97)])
def test_fpn_shapes_strides_and_values(height, width):
    torch.manual_seed(0)
    fpn = FPN(SMALL_CHANNELS, out_channels=16)
    assert fpn.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    features = fake_features(height, width)
    out = fpn(features)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6", "p7"]
    for name, tensor in out.items():
        stride = fpn.strides[name]
        assert tensor.shape == (1, 16, math.ceil(height / stride), math.ceil(width / stride)), name
    expected = reference_fpn(fpn, features)
    for name in out:
        torch.testing.assert_close(out[name], expected[name])


def test_p6_p7_sources():
    torch.manual_seed(0)
    features = fake_features(64, 64)
    from_c5 = FPN(SMALL_CHANNELS, out_channels=16, top_block="res5")
    out = from_c5(features)
    assert from_c5.p6.in_channels == 64
    torch.testing.assert_close(out["p6"], F.conv2d(features["res5"], from_c5.p6.weight, from_c5.p6.bias, stride=2, padding=1))
    torch.testing.assert_close(out["p7"], F.conv2d(F.relu(out["p6"]), from_c5.p7.weight, from_c5.p7.bias, stride=2, padding=1))

    from_p5 = FPN(SMALL_CHANNELS, out_channels=16, top_block="p5")
    out = from_p5(features)
    assert from_p5.p6.in_channels == 16
    torch.testing.assert_close(out["p6"], F.conv2d(out["p5"], from_p5.p6.weight, from_p5.p6.bias, stride=2, padding=1))
    torch.testing.assert_close(out["p7"], F.conv2d(F.relu(out["p6"]), from_p5.p7.weight, from_p5.p7.bias, stride=2, padding=1))


def test_fpn_init_is_kaiming_uniform_a1_with_zero_bias():
    torch.manual_seed(0)
    fpn = FPN({"res2": 64, "res3": 64, "res4": 64, "res5": 512}, out_channels=64)
    for conv in [fpn.lateral_convs["p5"], fpn.output_convs["p2"], fpn.p6]:
        fan_in = conv.weight[0].numel()
        # kaiming_uniform with a=1: U(-b, b), b = sqrt(6 / ((1 + a^2) fan_in)) = sqrt(3 / fan_in).
        bound = math.sqrt(3.0 / fan_in)
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.9 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


@pytest.mark.parametrize("top_block", ["res5", "p5"])
def test_p3_to_p7_builds_no_unused_parameters(top_block):
    fpn = FPN(SMALL_CHANNELS, out_channels=16, top_block=top_block, out_features=("p3", "p4", "p5", "p6", "p7"))
    assert set(fpn.output_convs) == {"p3", "p4", "p5"}
    assert set(fpn.lateral_convs) == {"p3", "p4", "p5"}
    out = fpn(fake_features(64, 96))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    sum(t.sum() for t in out.values()).backward()
    assert [n for n, p in fpn.named_parameters() if p.grad is None] == []


def test_p6_from_p5_needs_p5_layers_even_if_p5_not_returned():
    fpn = FPN(SMALL_CHANNELS, out_channels=16, top_block="p5", out_features=("p6", "p7"))
    assert set(fpn.output_convs) == {"p5"} and set(fpn.lateral_convs) == {"p5"}
    out = fpn(fake_features(64, 64))
    sum(t.sum() for t in out.values()).backward()
    assert [n for n, p in fpn.named_parameters() if p.grad is None] == []


def test_fpn_with_group_norm_has_no_conv_bias():
    fpn = FPN(SMALL_CHANNELS, out_channels=16, norm="GN", out_features=("p3", "p4"))
    lateral = fpn.lateral_convs["p3"]
    assert isinstance(lateral[1], nn.GroupNorm) and lateral[0].bias is None
    assert fpn.p6 is None and fpn.p7 is None
    out = fpn(fake_features(64, 64))
    assert out["p3"].shape == (1, 16, 8, 8) and out["p4"].shape == (1, 16, 4, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(out_features=("p1", "p2")),
        dict(out_features=("p4", "p3")),
        dict(out_features=("p8",)),
        dict(top_block="p4"),
        dict(in_features=("res2", "res4")),
        dict(in_features=("res2", "res6")),
    ],
)
def test_fpn_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="FPN"):
        FPN(SMALL_CHANNELS, **kwargs)


def test_backbone_with_fpn_every_parameter_gets_a_gradient():
    bottom_up = slimmable_resnet50(0.25)
    fpn = FPN(bottom_up.out_channels, out_channels=32, out_features=("p3", "p4", "p5", "p6", "p7"))
    model = BackboneWithFPN(bottom_up, fpn)
    assert model.out_channels == 32
    assert model.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert model.bottom_up is bottom_up
    out = model(torch.randn(2, 3, 65, 97))
    for name, tensor in out.items():
        stride = model.strides[name]
        assert tensor.shape == (2, 32, math.ceil(65 / stride), math.ceil(97 / stride))
    sum(t.sum() for t in out.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_backbone_with_fpn_checks_channels():
    bottom_up = slimmable_resnet50(0.25)
    with pytest.raises(ValueError, match="expects 8 channels for 'res2', the backbone gives 64"):
        BackboneWithFPN(bottom_up, FPN(SMALL_CHANNELS, out_channels=16))
    without_res2 = nn.Module()
    without_res2.out_channels = {"res3": 16, "res4": 32, "res5": 64}
    with pytest.raises(ValueError, match="does not produce 'res2'"):
        BackboneWithFPN(without_res2, FPN(SMALL_CHANNELS, out_channels=16))
    # An FPN that starts at p3 does not read res2 at all.
    fpn = FPN(SMALL_CHANNELS, out_channels=16, out_features=("p3", "p4", "p5", "p6", "p7"))
    assert BackboneWithFPN(without_res2, fpn).strides["p3"] == 8
