"""The command line: sub-commands, override parsing, data generation, FLOPs."""

import json

import pytest

from msadkit.cli import build_parser, main
from msadkit.config import list_packaged_configs


def test_help_lists_every_command():
    text = build_parser().format_help()
    for command in ("train", "evaluate", "data", "flops", "configs"):
        assert command in text


def test_configs_lists_packaged_configs(capsys):
    # One line per config: its name, then its description; the base_* files only with --all.
    assert main(["configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "fcos_demo" in listed
    assert listed == [name for name in list_packaged_configs() if not name.split("/")[-1].startswith("base_")]
    assert main(["configs", "--all"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == list_packaged_configs()


def test_data_synth_writes_a_coco_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num-train", "3", "--num-val", "2", "--image-size", "64"]) == 0
    train = json.loads((out / "train.json").read_text())
    assert len(train["images"]) == 3
    assert [c["name"] for c in train["categories"]] == ["circle", "square", "triangle", "cross"]


def test_data_synth_bad_argument_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--image-size", "8"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_flops_prints_backbone_and_total(capsys):
    assert main(["flops", "--config", "fcos_demo"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"] == [256, 512]
    assert 0 < report["backbone_gflops"] < report["total_gflops"]
    assert report["capacity"] == pytest.approx(0.0625 * 1.0, abs=0.01)


def test_low_resolution_quarters_the_backbone_flops(capsys):
    main(["flops", "--config", "fcos_demo"])
    high = json.loads(capsys.readouterr().out)
    main(["flops", "--config", "fcos_demo", "model.resolution=low"])
    low = json.loads(capsys.readouterr().out)
    assert low["backbone_gflops"] == pytest.approx(high["backbone_gflops"] / 4, rel=0.02)
    assert low["capacity"] == pytest.approx(0.017, abs=0.002)


def test_overrides_may_follow_options(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    overrides = tiny_overrides(run, max_iter=1)
    assert main(["train", "fcos_demo", "--no-eval", *overrides]) == 0
    assert (run / "model_final.pth").is_file()


def test_unknown_option_is_rejected():
    with pytest.raises(SystemExit):
        main(["train", "fcos_demo", "--bogus"])


def test_evaluate_a_teacher_branch_writes_its_own_file(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "teacher"
    assert main(["train", "msad/msad_teacher_demo", *tiny_overrides(run, max_iter=1), "model.arch=msad_teacher"]) == 0
    own = json.loads((run / "eval.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(run), "--branch", "high"]) == 0
    high = json.loads((run / "eval_high.json").read_text())
    assert set(high) == set(own)
    # The run's own result (the fused branch) is untouched.
    assert json.loads((run / "eval.json").read_text()) == own
