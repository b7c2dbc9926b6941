"""`convert-official`: released MSAD (detectron2-format) checkpoints as msadkit run folders.

The official state dicts here are built from the module tree of the MSAD code (``TFCOS`` /
``SFCOS``: slimmable ResNet-50 with switchable BN, detectron2 FPN with ``LastLevelP6P7``, the
``FCOSHead`` of ``msad/tower.py`` and the ``SELayer``), written out by hand in this file: no
official code is needed.
"""

from __future__ import annotations

import pytest
import torch

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.errors import CheckpointError
from msadkit.modeling.loading import load_run_model
from msadkit.modeling.official_checkpoint import convert_official_state, infer_width, msadkit_to_official
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic

WIDTH_LIST = (0.25, 0.5, 0.75, 1.0)
NUM_CLASSES = 3


def _bn(state, name, channels):
    for i, c in enumerate(channels):
        state[f"{name}.bn.{i}.weight"] = torch.rand(c) + 0.5
        state[f"{name}.bn.{i}.bias"] = torch.randn(c)
        state[f"{name}.bn.{i}.running_mean"] = torch.randn(c)
        state[f"{name}.bn.{i}.running_var"] = torch.rand(c) + 0.5
        state[f"{name}.bn.{i}.num_batches_tracked"] = torch.tensor(7 + i)


def official_backbone(prefix: str, width: float) -> dict[str, torch.Tensor]:
    """``<prefix>.bottom_up.*`` (SL_RESNET, all four widths stored) and the FPN of one width."""
    state: dict[str, torch.Tensor] = {}
    bu = f"{prefix}.bottom_up.features"
    channels = [int(64 * w) for w in WIDTH_LIST]
    state[f"{bu}.0.0.weight"] = torch.randn(max(channels), 3, 7, 7)
    _bn(state, f"{bu}.0.1", channels)
    index = 1
    for stage, blocks in enumerate((3, 4, 6, 3)):
        outp = [int((64, 128, 256, 512)[stage] * w * 4) for w in WIDTH_LIST]
        midp = [c // 4 for c in outp]
        for block in range(blocks):
            stride = 2 if block == 0 and stage != 0 else 1
            name = f"{bu}.{index}"
            state[f"{name}.body.0.weight"] = torch.randn(max(midp), max(channels), 1, 1)
            _bn(state, f"{name}.body.1", midp)
            state[f"{name}.body.3.weight"] = torch.randn(max(midp), max(midp), 3, 3)
            _bn(state, f"{name}.body.4", midp)
            state[f"{name}.body.6.weight"] = torch.randn(max(outp), max(midp), 1, 1)
            _bn(state, f"{name}.body.7", outp)
            if not (stride == 1 and channels == outp):
                state[f"{name}.shortcut.0.weight"] = torch.randn(max(outp), max(channels), 1, 1)
                _bn(state, f"{name}.shortcut.1", outp)
            channels = outp
            index += 1
    for level, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        state[f"{prefix}.fpn_lateral{level}.weight"] = torch.randn(256, int(c * width), 1, 1)
        state[f"{prefix}.fpn_lateral{level}.bias"] = torch.randn(256)
        state[f"{prefix}.fpn_output{level}.weight"] = torch.randn(256, 256, 3, 3)
        state[f"{prefix}.fpn_output{level}.bias"] = torch.randn(256)
    state[f"{prefix}.top_block.p6.weight"] = torch.randn(256, int(2048 * width), 3, 3)
    state[f"{prefix}.top_block.p6.bias"] = torch.randn(256)
    state[f"{prefix}.top_block.p7.weight"] = torch.randn(256, 256, 3, 3)
    state[f"{prefix}.top_block.p7.bias"] = torch.randn(256)
    return state


def official_head(prefix: str) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for tower in ("cls_tower", "bbox_tower"):
        for i in (0, 3, 6, 9):  # Conv2d(bias=True), GroupNorm(32), ReLU
            state[f"{prefix}.{tower}.{i}.weight"] = torch.randn(256, 256, 3, 3) * 0.01
            state[f"{prefix}.{tower}.{i}.bias"] = torch.randn(256)
            state[f"{prefix}.{tower}.{i + 1}.weight"] = torch.rand(256) + 0.5
            state[f"{prefix}.{tower}.{i + 1}.bias"] = torch.randn(256)
    state[f"{prefix}.cls_logits.weight"] = torch.randn(NUM_CLASSES, 256, 3, 3)
    state[f"{prefix}.cls_logits.bias"] = torch.randn(NUM_CLASSES)
    state[f"{prefix}.bbox_pred.weight"] = torch.randn(4, 256, 3, 3)
    state[f"{prefix}.ctrness.weight"] = torch.randn(1, 256, 3, 3)
    for level in range(5):
        state[f"{prefix}.scales.{level}.scale"] = torch.tensor([1.0 + level])
    return state


def official_teacher(width: float) -> dict[str, torch.Tensor]:
    state = {**official_backbone("T_backbone", width), **official_head("T_fcos_head")}
    state["SE.fc.0.weight"] = torch.randn(32, 512)
    state["SE.fc.2.weight"] = torch.randn(2, 32)
    return state


def official_student(width: float) -> dict[str, torch.Tensor]:
    return {**official_teacher(width), **official_backbone("S_backbone", width), **official_head("S_fcos_head")}


@pytest.fixture(scope="module")
def teacher_state():
    torch.manual_seed(0)
    return official_teacher(0.25)


@pytest.fixture(scope="module")
def student_state():
    torch.manual_seed(1)
    return official_student(0.25)


def test_width_is_read_from_the_fpn(teacher_state):
    assert infer_width(teacher_state, "T_backbone", "f") == 0.25
    broken = dict(teacher_state)
    broken["T_backbone.fpn_lateral3.weight"] = torch.zeros(256, 256, 1, 1)  # width 0.5 at res3
    with pytest.raises(CheckpointError, match="fpn_lateral3.weight reads 256 channels"):
        infer_width(broken, "T_backbone", "f")


def test_teacher_conversion_maps_every_tensor(teacher_state):
    state, config = convert_official_state(teacher_state, "msad-teacher")
    assert config["model"]["backbone"]["width"] == 0.25 and config["model"]["num_classes"] == NUM_CLASSES
    assert config["model"]["pixel_format"] == "bgr" and config["model"]["fcos"]["giou_smoothing"] == 1.0
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    bottom_up = "detector.backbone.bottom_up"
    # The stem keeps the leading 16 of 64 stored filters and the BN of width 0.25 (index 0).
    assert torch.equal(state[f"{bottom_up}.stem.conv.weight"], teacher_state["T_backbone.bottom_up.features.0.0.weight"][:16])
    assert torch.equal(state[f"{bottom_up}.stem.norm.running_var"], teacher_state["T_backbone.bottom_up.features.0.1.bn.0.running_var"])
    # res3.0 is official block 4 (after the stem and three res2 blocks); its shortcut strides.
    assert torch.equal(
        state[f"{bottom_up}.res3.0.shortcut.conv.weight"],
        teacher_state["T_backbone.bottom_up.features.4.shortcut.0.weight"][:128, :64],
    )
    assert torch.equal(state["detector.backbone.fpn.lateral_convs.p4.weight"], teacher_state["T_backbone.fpn_lateral4.weight"])
    assert torch.equal(state["detector.backbone.fpn.p7.bias"], teacher_state["T_backbone.top_block.p7.bias"])
    assert torch.equal(state["detector.head.cls_tower.9.bias"], teacher_state["T_fcos_head.cls_tower.9.bias"])
    assert torch.equal(state["detector.head.centerness.weight"], teacher_state["T_fcos_head.ctrness.weight"])
    assert state["detector.head.scales.3.scale"].shape == () and float(state["detector.head.scales.3.scale"]) == 4.0
    assert torch.equal(state["fusion.squeeze.weight"], teacher_state["SE.fc.0.weight"])
    assert torch.equal(state["fusion.score.weight"], teacher_state["SE.fc.2.weight"])
    # Round trip: msadkit -> official names gives back the used part of every official tensor.
    back = msadkit_to_official(model, "msad-teacher", 0.25)
    for key, value in back.items():
        stored = teacher_state[key]
        if stored.dim() == 4 and key.startswith("T_backbone.bottom_up"):
            stored = stored[: value.shape[0], : value.shape[1]]
        assert torch.equal(value, stored), key
    other_widths = {k for k in teacher_state if ".bn." in k and ".bn.0." not in k}
    assert set(back) == set(teacher_state) - other_widths


def test_student_conversion_keeps_the_student_alone(student_state):
    state, config = convert_official_state(student_state, "msad-student")
    assert config["model"]["resolution"] == "low" and config["method"] == "msad_student"
    model = build_model(config)
    model.load_state_dict(state, strict=True)
    assert torch.equal(state["head.cls_logits.bias"], student_state["S_fcos_head.cls_logits.bias"])
    assert torch.equal(state["backbone.fpn.p6.weight"], student_state["S_backbone.top_block.p6.weight"])
    assert not any(k.startswith(("detector.", "fusion.")) for k in state)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"T_fcos_head.extra.weight": torch.zeros(1)}), "unexpected keys: T_fcos_head.extra.weight"),
        (lambda s: s.pop("SE.fc.2.weight"), r"missing keys: SE.fc.2.weight \(for fusion.score.weight\)"),
        (lambda s: s.update({"T_fcos_head.bbox_pred.weight": torch.zeros(4, 256, 1, 1)}), "shape mismatch: T_fcos_head.bbox_pred.weight"),
        # A tower conv without a bias is not the MSAD head.
        (lambda s: s.pop("T_fcos_head.bbox_tower.3.bias"), "missing keys: T_fcos_head.bbox_tower.3.bias"),
        (lambda s: s.update({"T_backbone.bottom_up.features.2.body.0.weight": torch.zeros(16, 8, 1, 1)}), "stored \\(16, 8, 1, 1\\)"),
    ],
)
def test_teacher_conversion_is_strict(teacher_state, change, message):
    broken = dict(teacher_state)
    change(broken)
    with pytest.raises(CheckpointError, match=message):
        convert_official_state(broken, "msad-teacher", source="ckpt.pth")


def test_student_checks_its_teacher_part_and_width(student_state):
    broken = {k: v for k, v in student_state.items() if k != "T_fcos_head.scales.2.scale"}
    with pytest.raises(CheckpointError, match="missing keys: T_fcos_head.scales.2.scale"):
        convert_official_state(broken, "msad-student")
    wider = dict(student_state)
    for level, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        wider[f"S_backbone.fpn_lateral{level}.weight"] = torch.zeros(256, c // 2, 1, 1)
    with pytest.raises(CheckpointError, match="student backbone has width 0.5 and the teacher 0.25"):
        convert_official_state(wider, "msad-student")


def test_a_teacher_file_is_not_a_student(teacher_state):
    with pytest.raises(CheckpointError, match="no S_backbone.fpn_lateral2.weight"):
        convert_official_state(teacher_state, "msad-student")


def test_convert_official_command_writes_a_loadable_run(tmp_path, teacher_state, capsys):
    source = tmp_path / "model_final.pth"
    save_atomic({"model": teacher_state, "iteration": 90000}, source)
    out = tmp_path / "run"
    assert main(["convert-official", "msad-teacher", str(source), "--out", str(out), "data.num_workers=0"]) == 0
    model, config = load_run_model(out)
    assert config["data"]["num_workers"] == 0 and config["output_dir"] == str(out)
    assert load_config("msad/official/msad_teacher_w025")["model"]["fcos"]["tower_conv_bias"] is True
    assert torch.equal(model.fusion.score.weight, teacher_state["SE.fc.2.weight"])
    assert set(load_checkpoint_file(out / "model_final.pth")) == {"model", "config"}
    # A second conversion into the same folder, and a file that is no checkpoint, are refused.
    assert main(["convert-official", "msad-teacher", str(source), "--out", str(out)]) == 2
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    assert main(["convert-official", "msad-teacher", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already holds a run" in err[0] and "junk.pth" in err[1]
