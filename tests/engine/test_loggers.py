"""trainer.loggers: names checked, optional packages named, MLflow and W&B runs read back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.train.loggers import build_loggers, check_loggers, flatten_config
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.engine.train.validation import validation_rows
from msadkit.errors import ConfigError, MsadkitError
from tests.conftest import tiny_training_overrides


def config_with(tmp_path, *overrides, max_iter=2):
    return load_config("fcos_demo", tiny_training_overrides(tmp_path / "run", max_iter=max_iter) + list(overrides))


def test_default_loggers_are_csv_and_tensorboard(tmp_path):
    config = load_config("fcos_demo")
    assert config["trainer"]["loggers"] == ["csv", "tensorboard"]
    loggers = build_loggers(config, tmp_path / "run")
    assert [type(logger).__name__ for logger in loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert not (tmp_path / "run").exists()  # building a logger writes nothing


def test_unknown_logger_is_a_config_error_listing_the_known_ones(tmp_path):
    config = config_with(tmp_path, "trainer.loggers=[csv, neptune]")
    with pytest.raises(ConfigError) as error:
        train(config)
    message = str(error.value)
    assert "trainer.loggers" in message and "'neptune'" in message
    assert "csv, tensorboard, mlflow, wandb" in message
    assert not (tmp_path / "run").exists()


def test_repeated_logger_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="csv listed more than once"):
        check_loggers(config_with(tmp_path, "trainer.loggers=[csv, csv]"))


def test_unknown_logger_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(["train", "fcos_demo", *tiny_training_overrides(run), "trainer.loggers=[tensorbord]"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "tensorbord" in err and "tensorboard" in err


@pytest.mark.parametrize("name, module", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_missing_logger_package_names_the_extra(tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    config = config_with(tmp_path, f"trainer.loggers=[csv, {name}]")
    with pytest.raises(MsadkitError) as error:
        train(config)
    assert f"pip install msadkit[{name}]" in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_flatten_config_uses_the_override_syntax():
    flat = flatten_config({"solver": {"base_lr": 0.01, "steps": [3, 4]}, "output_dir": "x", "a": {"b": {"c": None}}})
    assert flat == {"solver.base_lr": 0.01, "solver.steps": [3, 4], "output_dir": "x", "a.b.c": None}


def test_mlflow_run_holds_params_loss_and_val_ap(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Set then removed so that monkeypatch restores the variable that msadkit sets for a file store.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    uri = (tmp_path / "mlruns").as_uri()
    config = config_with(
        tmp_path,
        "trainer.loggers=[csv, mlflow]",
        f"trainer.mlflow.tracking_uri={uri}",
        "trainer.mlflow.experiment=validation-test",
        "trainer.eval_period=2",
        max_iter=4,
    )
    run_dir = train(config, evaluate=False)

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("validation-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["solver.max_iter"] == "4"
    assert run.data.params["trainer.eval_period"] == "2"
    assert run.data.params["model.arch"] == "fcos"

    records = read_metrics(run_dir / "metrics.jsonl")
    losses = {record["iter"]: record["loss"] for record in records if "loss" in record}
    history = client.get_metric_history(run.info.run_id, "train/loss")
    # The step of a training loss is its iteration in metrics.jsonl, as for val/AP.
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    assert {m.step: m.value for m in history} == pytest.approx(losses, rel=1e-6)

    val = {row["iter"]: row["val/AP"] for row in validation_rows(records)}
    ap_history = client.get_metric_history(run.info.run_id, "val/AP")
    assert {m.step: m.value for m in ap_history} == pytest.approx(val, abs=1e-9)
    assert sorted(val) == [2, 4]


def test_wandb_offline_run_holds_the_logged_keys(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = config_with(tmp_path, "trainer.loggers=[wandb]", "trainer.eval_period=2", max_iter=2)
    train(config, evaluate=False)

    runs = sorted(wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1, runs
    (records,) = runs[0].glob("run-*.wandb")
    data = records.read_bytes()
    # The offline file is W&B's binary record log; the metric and config names appear verbatim.
    for key in (b"train/loss", b"val/AP", b"val/AP50", b"solver.base_lr", b"trainer.eval_period"):
        assert key in data, key


def test_optional_packages_are_imported_only_when_listed(tmp_path):
    # A fresh interpreter: this test session has imported them already.
    code = (
        "import sys\n"
        "from msadkit.config import load_config\n"
        "from msadkit.engine.train.loggers import build_loggers\n"
        "import msadkit.engine.train.trainer\n"
        "build_loggers(load_config('fcos_demo'), sys.argv[1])\n"
        "print(sorted(m for m in ('mlflow', 'wandb', 'faster_coco_eval') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
