"""Slimmable ResNet-50: channel layout, official-checkpoint loading and equivalence with the official forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from msadkit.errors import CheckpointError
from msadkit.modeling.backbones.slimmable import WIDTHS, load_slimmable_checkpoint, slimmable_resnet50
from msadkit.modeling.norm import FrozenBatchNorm2d

OFFICIAL_WIDTHS = [0.25, 0.5, 0.75, 1.0]
BLOCKS = [3, 4, 6, 3]
BASE = [64, 128, 256, 512]


def official_layout(width: float) -> list[dict]:
    """Per official block index 1..16: in/out/mid channels and stride, from the paper's rule."""
    blocks = []
    in_c = int(64 * width)
    for stage, (n, f) in enumerate(zip(BLOCKS, BASE)):
        out_c = int(f * 4 * width)
        for b in range(n):
            stride = 2 if b == 0 and stage > 0 else 1
            blocks.append(dict(in_c=in_c, out_c=out_c, mid=out_c // 4, stride=stride, stage=stage))
            in_c = out_c
    return blocks


def make_official_state(seed: int, *, max_width: float = 1.0) -> dict[str, torch.Tensor]:
    """An official-format state dict: convs stored at ``max_width``, one BN per width (4 in all)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_c: int, in_c: int, k: int) -> None:
        state[f"module.{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=g) / math.sqrt(in_c * k * k)

    def switchable_bn(name: str, full_channels: int) -> None:
        for i, w in enumerate(OFFICIAL_WIDTHS):
            c = int(full_channels * w)
            p = f"module.{name}.bn.{i}."
            state[p + "weight"] = 0.5 + torch.rand(c, generator=g)
            state[p + "bias"] = 0.2 * torch.randn(c, generator=g)
            state[p + "running_mean"] = 0.2 * torch.randn(c, generator=g)
            state[p + "running_var"] = 0.5 + torch.rand(c, generator=g)
            state[p + "num_batches_tracked"] = torch.tensor(1000 + i)

    conv("features.0.0", int(64 * max_width), 3, 7)
    switchable_bn("features.0.1", 64)
    full = official_layout(1.0)
    stored = official_layout(max_width)
    for k, (blk, st) in enumerate(zip(full, stored), start=1):
        conv(f"features.{k}.body.0", st["mid"], st["in_c"], 1)
        switchable_bn(f"features.{k}.body.1", blk["mid"])
        conv(f"features.{k}.body.3", st["mid"], st["mid"], 3)
        switchable_bn(f"features.{k}.body.4", blk["mid"])
        conv(f"features.{k}.body.6", st["out_c"], st["mid"], 1)
        switchable_bn(f"features.{k}.body.7", blk["out_c"])
        if blk["stride"] != 1 or blk["in_c"] != blk["out_c"]:
            conv(f"features.{k}.shortcut.0", st["out_c"], st["in_c"], 1)
            switchable_bn(f"features.{k}.shortcut.1", blk["out_c"])
    state["module.classifier.0.weight"] = torch.randn(1000, int(2048 * max_width), generator=g)
    state["module.classifier.0.bias"] = torch.randn(1000, generator=g)
    return state


def official_forward(state: dict[str, torch.Tensor], width: float, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official network at ``width`` in eval mode, written with functional ops on the raw dict."""
    idx = OFFICIAL_WIDTHS.index(width)

    def conv(h: torch.Tensor, name: str, out_c: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
        weight = state[f"module.{name}.weight"][:out_c, : h.shape[1]]
        return F.conv2d(h, weight, stride=stride, padding=padding)

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        p = f"module.{name}.bn.{idx}."
        return F.batch_norm(
            h, state[p + "running_mean"], state[p + "running_var"], state[p + "weight"], state[p + "bias"],
            training=False, eps=1e-5,
        )

    h = F.relu(bn(conv(x, "features.0.0", int(64 * width), 2, 3), "features.0.1"))
    h = F.max_pool2d(h, 3, 2, 1)
    outputs = {}
    layout = official_layout(width)
    for k, blk in enumerate(layout, start=1):
        body = F.relu(bn(conv(h, f"features.{k}.body.0", blk["mid"]), f"features.{k}.body.1"))
        body = F.relu(bn(conv(body, f"features.{k}.body.3", blk["mid"], blk["stride"], 1), f"features.{k}.body.4"))
        body = bn(conv(body, f"features.{k}.body.6", blk["out_c"]), f"features.{k}.body.7")
        if blk["stride"] == 1 and blk["in_c"] == blk["out_c"]:
            shortcut = h
        else:
            shortcut = bn(conv(h, f"features.{k}.shortcut.0", blk["out_c"], blk["stride"]), f"features.{k}.shortcut.1")
        h = F.relu(body + shortcut)
        last_of_stage = k == len(layout) or layout[k]["stage"] != blk["stage"]
        if last_of_stage:
            outputs[f"res{blk['stage'] + 2}"] = h
    return outputs


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory):
    state = make_official_state(0)
    path = tmp_path_factory.mktemp("slim") / "s_resnet50_0.25_0.5_0.75_1.0.pt"
    torch.save({"model": state, "last_epoch": 99}, path)
    return path, state


@pytest.fixture(scope="module")
def small_state():
    """Official-format dict whose convs are stored at width 0.25 only: enough for width 0.25."""
    return make_official_state(1, max_width=0.25)


def save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------------------------------
# Layout


def test_widths_constant():
    assert WIDTHS == (0.25, 0.5, 0.75, 1.0)


def test_channels_at_width_quarter():
    model = slimmable_resnet50(0.25)
    assert model.width == 0.25
    assert model.stem.conv.out_channels == 16
    assert model.out_channels == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    for name, mid, out, n in zip(["res2", "res3", "res4", "res5"], [16, 32, 64, 128], [64, 128, 256, 512], BLOCKS):
        stage = getattr(model, name)
        assert len(stage) == n
        for block in stage:
            assert block.conv1.out_channels == mid
            assert block.conv2.in_channels == block.conv2.out_channels == mid
            assert block.conv3.out_channels == out


def test_width_one_is_standard_resnet50():
    model = slimmable_resnet50(1.0)
    assert model.stem.conv.out_channels == 64
    assert model.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert [model.res2[0].conv1.out_channels, model.res3[0].conv1.out_channels,
            model.res4[0].conv1.out_channels, model.res5[0].conv1.out_channels] == [64, 128, 256, 512]
    reference = torchvision.models.resnet50(weights=None)
    expected = sum(p.numel() for p in reference.parameters()) - sum(p.numel() for p in reference.fc.parameters())
    assert sum(p.numel() for p in model.parameters()) == expected


def test_strides_and_shortcuts():
    model = slimmable_resnet50(0.5)
    for stage_index, name in enumerate(["res2", "res3", "res4", "res5"]):
        for block_index, block in enumerate(getattr(model, name)):
            expected_stride = 2 if block_index == 0 and stage_index > 0 else 1
            assert block.conv2.stride == (expected_stride, expected_stride)
            assert block.conv1.stride == (1, 1) and block.conv3.stride == (1, 1)
            # Only the first block of each stage changes channels or resolution.
            assert (block.shortcut is not None) == (block_index == 0)
            if block.shortcut is not None:
                assert block.shortcut.conv.stride == (expected_stride, expected_stride)


@pytest.mark.parametrize("width", [0.25, 0.75])
def test_forward_shapes(width):
    model = slimmable_resnet50(width)
    out = model(torch.randn(1, 3, 32, 64))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, tensor in out.items():
        stride = model.strides[name]
        assert tensor.shape == (1, model.out_channels[name], 32 // stride, 64 // stride)


@pytest.mark.parametrize("width", [0.3, 2.0, 0, "0.5", True])
def test_bad_width_raises_value_error(width):
    with pytest.raises(ValueError, match=str(width)):
        slimmable_resnet50(width)


def test_every_parameter_gets_a_gradient():
    model = slimmable_resnet50(0.25)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(t.sum() for t in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_norm_variants():
    gn = slimmable_resnet50(0.25, norm="GN")
    # 16 stem channels: 32 groups do not divide them, so the largest divisor (16) is used.
    assert isinstance(gn.stem.norm, nn.GroupNorm) and gn.stem.norm.num_groups == 8
    assert gn.res5[0].norm3.num_groups == 32
    frozen = slimmable_resnet50(0.25, norm="FrozenBN")
    assert isinstance(frozen.res3[1].norm2, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    sync = slimmable_resnet50(0.25, norm="SyncBN")
    assert isinstance(sync.res2[0].norm1, nn.SyncBatchNorm)
    assert sync(torch.randn(2, 3, 32, 32))["res5"].shape == (2, 512, 1, 1)
    with pytest.raises(ValueError, match="LN"):
        slimmable_resnet50(0.25, norm="LN")


def test_freeze_at_two_freezes_stem_and_res2():
    model = slimmable_resnet50(0.25, freeze_at=2)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem.", "res2."))), name
    assert isinstance(model.stem.norm, FrozenBatchNorm2d)
    assert isinstance(model.res2[2].norm3, FrozenBatchNorm2d)
    assert isinstance(model.res3[0].norm1, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="freeze_at"):
        slimmable_resnet50(0.25, freeze_at=6)


# ---------------------------------------------------------------------------------------------
# Official checkpoint


@pytest.mark.parametrize("width", OFFICIAL_WIDTHS)
def test_loaded_model_matches_official_forward(official_checkpoint, width):
    path, state = official_checkpoint
    model = slimmable_resnet50(width)
    load_slimmable_checkpoint(model, path, width)
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = model(x)
        reference = official_forward(state, width, x)
    assert list(ours) == list(reference) == ["res2", "res3", "res4", "res5"]
    for name in reference:
        # Guard against a vacuous comparison of two all-zero maps.
        assert reference[name].abs().mean() > 1e-3
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-5)
    # This width's BN statistics, not another width's, ended up in the model.
    idx = OFFICIAL_WIDTHS.index(width)
    torch.testing.assert_close(model.res4[2].norm2.running_var, state[f"module.features.10.body.4.bn.{idx}.running_var"])
    assert model.res4[2].norm2.num_batches_tracked.item() == 1000 + idx


def test_loaded_frozen_bn_model_matches_official_forward(official_checkpoint):
    path, state = official_checkpoint
    model = slimmable_resnet50(0.5, norm="FrozenBN")
    load_slimmable_checkpoint(model, path, 0.5)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)  # FrozenBN computes the eval-mode function even in training mode
        reference = official_forward(state, 0.5, x)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-5)


def test_partly_frozen_model_loads_and_matches(tmp_path, small_state):
    path = save(tmp_path, {"model": small_state})
    model = slimmable_resnet50(0.25, freeze_at=2)  # stem and res2 norms are FrozenBN, the rest BN
    load_slimmable_checkpoint(model, path, 0.25)
    assert model.res3[0].norm1.num_batches_tracked.item() == 1000
    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, reference = model(x), official_forward(small_state, 0.25, x)
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-5)


def test_keys_without_module_prefix_load(tmp_path, small_state):
    stripped = {k[len("module."):]: v for k, v in small_state.items()}
    path = save(tmp_path, {"model": stripped})
    model = slimmable_resnet50(0.25)
    load_slimmable_checkpoint(model, path, 0.25)
    torch.testing.assert_close(model.res5[2].conv3.weight, stripped["features.16.body.6.weight"])


def _assert_unchanged(model, before):
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_missing_keys_are_listed(tmp_path, small_state):
    state = dict(small_state)
    del state["module.features.5.body.3.weight"]
    del state["module.features.0.1.bn.0.running_var"]
    path = save(tmp_path, {"model": state})
    model = slimmable_resnet50(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_slimmable_checkpoint(model, path, 0.25)
    message = str(info.value)
    assert str(path) in message and "missing" in message
    assert "module.features.5.body.3.weight" in message
    assert "module.features.0.1.bn.0.running_var" in message
    _assert_unchanged(model, before)


def test_missing_bn_of_other_width_is_not_needed(tmp_path, small_state):
    state = {k: v for k, v in small_state.items() if ".bn.3." not in k}
    path = save(tmp_path, {"model": state})
    model = slimmable_resnet50(0.25)
    load_slimmable_checkpoint(model, path, 0.25)
    torch.testing.assert_close(model.stem.norm.bias, state["module.features.0.1.bn.0.bias"])


UNEXPECTED_KEYS = ["module.features.17.body.0.weight", "module.features.2.body.1.bn.4.weight", "module.head.weight"]


@pytest.mark.parametrize(
    "changes, width, listed, unlisted",
    [
        pytest.param(
            {
                UNEXPECTED_KEYS[0]: torch.zeros(1, 1, 1, 1),
                UNEXPECTED_KEYS[1]: torch.zeros(16),
                UNEXPECTED_KEYS[2]: torch.zeros(3),
            },
            0.25,
            ["unexpected", *UNEXPECTED_KEYS],
            ["classifier"],
            id="unexpected-keys",
        ),
        pytest.param(
            {},
            0.5,
            # Width 0.5 stem needs 32 output channels; the file stores 16.
            ["shape mismatch", "module.features.0.0.weight (stored (16, 3, 7, 7), needs at least (32, 3, 7, 7))"],
            [],
            id="too-small-conv",
        ),
        pytest.param(
            {
                "module.features.3.body.7.bn.0.running_mean": torch.zeros(65),
                "module.features.0.0.weight": torch.zeros(64, 3, 5, 5),
            },
            0.25,
            [
                "module.features.3.body.7.bn.0.running_mean (stored (65,), needs (64,))",
                "module.features.0.0.weight (stored (64, 3, 5, 5)",
            ],
            [],
            id="wrong-bn-shape",
        ),
    ],
)
def test_keys_the_model_cannot_take_are_listed(tmp_path, small_state, changes, width, listed, unlisted):
    path = save(tmp_path, {"model": {**small_state, **changes}})
    with pytest.raises(CheckpointError) as info:
        load_slimmable_checkpoint(slimmable_resnet50(width), path, width)
    message = str(info.value)
    for text in listed:
        assert text in message
    for text in unlisted:
        assert text not in message


def test_file_problems_name_the_file(tmp_path, small_state):
    model = slimmable_resnet50(0.25)
    missing = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match="absent.pt"):
        load_slimmable_checkpoint(model, missing, 0.25)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_slimmable_checkpoint(model, garbage, 0.25)
    no_model = save(tmp_path, {"state_dict": small_state}, name="no_model.pt")
    with pytest.raises(CheckpointError, match="no_model.pt.*'model'"):
        load_slimmable_checkpoint(model, no_model, 0.25)


def test_group_norm_model_is_refused(tmp_path, small_state):
    path = save(tmp_path, {"model": small_state})
    with pytest.raises(CheckpointError, match="GroupNorm"):
        load_slimmable_checkpoint(slimmable_resnet50(0.25, norm="GN"), path, 0.25)


def test_width_must_match_model(tmp_path, small_state):
    path = save(tmp_path, {"model": small_state})
    with pytest.raises(ValueError, match="0.5"):
        load_slimmable_checkpoint(slimmable_resnet50(0.25), path, 0.5)
