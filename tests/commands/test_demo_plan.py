"""`msadkit demo`'s plan: the pretrained backbone reaches every training run, the high-res baseline is trained
beside the teacher at its length, and the demo configs train from a (tiny) pretrained checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from msadkit.cli import main
from msadkit.commands import demo
from msadkit.config import load_config
from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_backbone
from msadkit.modeling.builders import build_bottom_up
from tests.conftest import tiny_training_overrides

TRAINING_NOTEBOOKS = ("01_teacher_training", "02_student_distillation")


def test_every_training_run_starts_from_the_pretrained_backbone_at_the_pretrained_lr(tmp_path):
    weights = tmp_path / "pretrained.pt"
    plan = demo.demo_plan(tmp_path / "demo", pretrained=weights, overrides=["solver.batch_size=2"])
    folders = [folder.name for _, folder, _ in plan]
    assert folders == ["01_teacher_training", "01_high_res_baseline", "02_student_distillation",
                       "03_feature_alignment", "04_ap_table"]
    trainings = [(name, params) for name, _, params in plan if name in TRAINING_NOTEBOOKS]
    assert len(trainings) == 3
    for _, params in trainings:
        # The weights and LR come first, so a caller's own overrides still win.
        assert params["overrides"] == [
            f"model.backbone.weights={weights.resolve()}", "solver.base_lr=0.03", "solver.batch_size=2"
        ]
    teacher, high, students = (params for _, params in trainings)
    assert (teacher["config"], teacher["iterations"]) == ("msad/msad_teacher_demo", 450)
    # The paper compares the teacher with a high-res FCOS of the same schedule.
    assert (high["config"], high["iterations"], high["evaluate_branches"]) == ("msad/fcos_high_demo", 450, False)
    assert students["iterations"] == 450 and students["teacher_run"] == str(tmp_path.resolve() / "demo" / "01_teacher_training")
    # The AP table collects every run of the demo folder, the high-res baseline included.
    assert plan[-1][2]["search_dirs"] == [str((tmp_path / "demo").resolve())]


def test_from_scratch_plan_keeps_the_configs_learning_rate(tmp_path):
    plan = demo.demo_plan(tmp_path, pretrained=None, teacher_iterations=5, student_iterations=4)
    for name, _, params in plan:
        if name in TRAINING_NOTEBOOKS:
            assert not any(o.startswith(("model.backbone.weights", "solver.base_lr")) for o in params["overrides"])
    assert [p.get("iterations") for _, _, p in plan[:3]] == [5, 5, 4]


@pytest.mark.parametrize("flags, pretrained", [([], True), (["--from-scratch"], False)])
def test_demo_command_hands_the_cached_backbone_to_the_plan(tmp_path, monkeypatch, flags, pretrained):
    calls, seen = [], {}
    monkeypatch.setattr("msadkit.engine.train.pretrain.cached_pretrained_backbone", lambda log=None: calls.append(1) or tmp_path / "w.pt")

    def fake_run_notebook(notebook, run_dir, parameters, force=False):
        seen[run_dir.name] = parameters
        files = {"markdown": "ap_table.md"} if notebook == "04_ap_table" else {}
        if files:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "ap_table.md").write_text("| table |\n")
        return SimpleNamespace(skipped=False, duration_s=0.0, run_dir=run_dir, executed_notebook=run_dir / "x.ipynb",
                               results={"files": files, "figures": {}})

    monkeypatch.setattr("msadkit.notebook.runner.run_notebook", fake_run_notebook)
    assert main(["demo", "--out", str(tmp_path / "demo"), *flags]) == 0
    assert calls == ([1] if pretrained else [])
    weights = [o for o in seen["01_high_res_baseline"]["overrides"] if o.startswith("model.backbone.weights=")]
    assert weights == ([f"model.backbone.weights={(tmp_path / 'w.pt').resolve()}"] if pretrained else [])


def test_demo_configs_train_from_a_tiny_pretrained_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("MSADKIT_CACHE", str(tmp_path / "cache"))
    settings = PretrainSettings(num_images=6, image_size=64, crop_size=32, iterations=2, batch_size=4)
    weights = cached_pretrained_backbone(settings)
    assert weights.is_file() and weights.parent == tmp_path / "cache" / "pretrained"
    assert cached_pretrained_backbone(settings) == weights  # reused, not trained again
    overrides = demo.pretrained_overrides(weights)
    teacher_run = tmp_path / "teacher"
    assert main(["train", "msad/msad_teacher_demo", "--no-eval", *overrides,
                 *tiny_training_overrides(teacher_run, max_iter=1, arch="msad_teacher")]) == 0
    config = load_config("msad/msad_teacher_demo", overrides)
    assert config["solver"]["base_lr"] == 0.03
    backbone = build_bottom_up(config["model"]["backbone"])
    stored = torch.load(weights, weights_only=False)["model"]
    assert torch.equal(backbone.stem.conv.weight, stored["features.0.0.weight"])
    student_run = tmp_path / "student"
    assert main(["train", "msad/msad_student_demo", "--no-eval", *overrides, f"distill.teacher={teacher_run}",
                 *tiny_training_overrides(student_run, max_iter=1)]) == 0
    assert Path(student_run / "model_final.pth").is_file()
