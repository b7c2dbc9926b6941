"""``--resume`` with a config that builds another model: one line, exit 2, the run folder untouched."""

from __future__ import annotations

import pytest

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.train.resume_check import differing_config_keys
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=2)), evaluate=False)
    return run


def test_wider_backbone_on_resume_is_one_line_and_leaves_the_run_as_it_was(finished_run, tiny_overrides, capsys):
    before = snapshot(finished_run)
    overrides = tiny_overrides(finished_run, max_iter=4) + ["model.backbone.width=0.5"]
    assert main(["train", "fcos_demo", "--resume", "--no-eval", *overrides]) == 2
    # Lightning's "GPU available" notices aside, the error is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("msadkit train: error: --resume: checkpoint ")
    assert "model.backbone.width (run 0.25, now 0.5)" in errors[0]
    assert "shape mismatch" in errors[0]
    # config.yaml, metrics.jsonl and the checkpoints byte for byte.
    assert snapshot(finished_run) == before
    # The finished run still evaluates.
    assert main(["evaluate", str(finished_run)]) == 0


def test_fitting_config_still_resumes(finished_run, tiny_overrides):
    train(load_config("fcos_demo", tiny_overrides(finished_run, max_iter=3)), resume=True, evaluate=False)


def test_another_architecture_names_the_differing_keys(finished_run, tiny_overrides):
    config = load_config("fcos_demo", tiny_overrides(finished_run, max_iter=4, arch="retinanet"))
    with pytest.raises(ConfigError, match=r"model.arch \(run 'fcos', now 'retinanet'\).*missing keys") as caught:
        train(config, resume=True, evaluate=False)
    assert "\n" not in str(caught.value)


def test_differing_config_keys_lists_model_keys_first():
    before = {"output_dir": "a", "solver": {"max_iter": 2}, "model": {"backbone": {"width": 0.25}, "arch": "fcos"}}
    now = {"output_dir": "b", "solver": {"max_iter": 4}, "model": {"backbone": {"width": 0.5}, "arch": "fcos"}}
    assert differing_config_keys(before, now) == [
        "model.backbone.width (run 0.25, now 0.5)",
        "solver.max_iter (run 2, now 4)",
    ]
