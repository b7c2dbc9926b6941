"""Training helpers of the notebooks: configs from parameters, reuse/resume, subprocess training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

import msadkit.notebook.training as notebook_training
from msadkit.config import dump_config, load_config
from msadkit.engine.train import launch
from msadkit.engine.train.launch import launch_training, training_command
from msadkit.errors import ConfigError, MsadkitError
from msadkit.notebook.training import (
    baseline_settings,
    distillation_settings,
    loss_specs,
    notebook_config,
    override_strings,
    run_state,
    train_or_reuse,
)
from tests.tiny_runs import tiny_notebook_overrides

TINY_FCOS = tiny_notebook_overrides(num_train=4, num_val=2) + ["trainer.log_period=1"]


def test_iterations_rescale_the_schedule_and_label_it(tmp_path):
    base = load_config("fcos_demo")
    solver = base["solver"]
    assert (solver["max_iter"], solver["steps"], solver["warmup_iters"]) == (300, [240, 280], 50)
    config = notebook_config("fcos_demo", ["solver.base_lr=0.02"], output_dir=tmp_path / "run", iterations=150, seed=3)
    assert config["solver"]["max_iter"] == 150
    assert config["solver"]["steps"] == [120, 140]
    assert config["solver"]["warmup_iters"] == 25
    assert config["schedule"] == "demo-150it"
    assert config["solver"]["base_lr"] == 0.02
    assert config["trainer"]["seed"] == 3 and config["trainer"]["progress_bar"] is False
    assert config["output_dir"] == str(tmp_path / "run")
    unchanged = notebook_config("fcos_demo", output_dir=tmp_path / "run", iterations=300, device="gpu", devices=2)
    assert unchanged["schedule"] == "demo"
    assert (unchanged["trainer"]["accelerator"], unchanged["trainer"]["devices"]) == ("gpu", 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device must be one of"),
        ({"devices": 0}, "devices must be >= 1"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"overrides": "solver.max_iter=3"}, "list of key=value strings"),
        ({"extra": {"solver": {"bogus": 1}}}, "unknown config key 'solver.bogus'"),
    ],
)
def test_bad_notebook_parameters_are_config_errors(tmp_path, kwargs, message):
    overrides = kwargs.pop("overrides", [])
    with pytest.raises(ConfigError, match=message):
        notebook_config("fcos_demo", overrides, output_dir=tmp_path, **kwargs)


def test_override_strings_survive_the_config_loader(tmp_path):
    extra = {
        "output_dir": str(tmp_path / "odd: name"),
        "distill": {"teacher": None, "losses": [{"type": "gid", "weight": 0.5}]},
        "trainer": {"progress_bar": False},
    }
    texts = override_strings(extra)
    assert "distill.losses=[{type: gid, weight: 0.5}]" in texts
    config = load_config("fcos_demo", texts)
    assert config["output_dir"] == str(tmp_path / "odd: name")
    assert config["distill"]["losses"] == [{"type": "gid", "weight": 0.5}]
    assert config["distill"]["teacher"] is None


def test_loss_specs_and_student_settings(tmp_path):
    assert loss_specs(None) is None
    assert loss_specs(["gid", {"type": "adl", "weight": 2.0}]) == [{"type": "gid"}, {"type": "adl", "weight": 2.0}]
    assert loss_specs("adl") == [{"type": "adl"}]
    with pytest.raises(ConfigError):
        loss_specs([])
    with pytest.raises(ConfigError, match=r"losses\[0\]"):
        loss_specs([3])

    settings = distillation_settings(tmp_path / "teacher", losses=["gid", "msad_feature"], width=0.5)
    assert settings["distill"] == {
        "teacher": str((tmp_path / "teacher").resolve()),
        "losses": [{"type": "gid"}, {"type": "msad_feature"}],
    }
    assert settings["method"] == "gid+msad_feature" and settings["role"] == "student"
    assert settings["model"]["backbone"]["width"] == 0.5
    assert distillation_settings(tmp_path, method="mine")["method"] == "mine"

    student = load_config("msad/msad_student_demo")
    baseline = load_config("msad/msad_student_demo", override_strings(baseline_settings(student)))
    assert baseline["distill"] == {"teacher": None, "init_student_from_teacher": False, "cross_resolution": False, "losses": []}
    assert (baseline["role"], baseline["method"], baseline["model"]["resolution"]) == ("baseline", "fcos", "low")


def _fake_finished_run(config: dict) -> Path:
    run_dir = Path(config["output_dir"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "model_final.pth").write_bytes(b"")
    (run_dir / "summary.json").write_text("{}")
    return run_dir


def test_train_or_reuse_reuses_a_finished_run_and_refuses_another_config(tmp_path, monkeypatch):
    config = notebook_config("fcos_demo", output_dir=tmp_path / "run", iterations=5)
    run_dir = _fake_finished_run(config)
    assert run_state(run_dir) == "finished"
    monkeypatch.setattr("msadkit.engine.train.trainer.train", lambda *a, **k: pytest.fail("must not train again"))
    messages = []
    assert train_or_reuse(config, echo=messages.append) == run_dir
    assert "reusing" in messages[0]
    other = notebook_config("fcos_demo", output_dir=tmp_path / "run", iterations=6)
    with pytest.raises(ConfigError, match="different config"):
        train_or_reuse(other)


def test_several_devices_train_in_a_subprocess(tmp_path, monkeypatch):
    calls = []
    def fake_launch(config, **kwargs):
        calls.append((config, kwargs))
        return "launched"

    monkeypatch.setattr(notebook_training, "launch_training", fake_launch)
    monkeypatch.setattr("msadkit.engine.train.trainer.train", lambda *a, **k: pytest.fail("DDP must not start in the kernel"))
    config = notebook_config("fcos_demo", output_dir=tmp_path / "run", devices=2, device="gpu")
    assert train_or_reuse(config) == "launched"
    assert calls[0][0]["trainer"]["devices"] == 2 and calls[0][1]["resume"] is False

    command = training_command(tmp_path / "c.yaml", tmp_path / "run", devices=4, resume=True, evaluate=False)
    assert command[:4] == [sys.executable, "-m", "msadkit.cli", "train"]
    assert {"trainer.devices=4", "trainer.strategy=ddp", "--resume", "--no-eval"} <= set(command)
    assert command[command.index("--output-dir") + 1] == str(tmp_path / "run")


def test_launch_training_runs_msadkit_train_in_a_child_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = notebook_config("fcos_demo", TINY_FCOS, output_dir=tmp_path / "run", iterations=1)
    lines = []
    # One device keeps the test on the CPU; the command is the one used with DDP (see above).
    run_dir = launch_training(config, evaluate=False, echo=lines.append)
    assert run_dir == tmp_path / "run"
    assert (run_dir / "model_final.pth").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["solver"]["max_iter"] == 1
    assert lines[0].startswith("launching: ") and any("run folder" in line for line in lines)



def test_a_failing_training_process_is_an_error_with_its_last_lines(tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "import sys; print('loss is nan'); sys.exit(3)"]
    monkeypatch.setattr(launch, "training_command", lambda *args, **kwargs: failing)
    config = notebook_config("fcos_demo", output_dir=tmp_path / "run", devices=2)
    lines = []
    with pytest.raises(MsadkitError, match=r"exited with status 3(.|\n)*loss is nan"):
        launch_training(config, echo=lines.append)
    assert "loss is nan" in lines
