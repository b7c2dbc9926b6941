"""What the loggers and metrics.jsonl get: under DDP the mean of every rank's losses, and in every
logger the iteration of metrics.jsonl as the step."""

from __future__ import annotations

import csv
import json
import textwrap

import pytest

from msadkit.config import load_config
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.engine.train.validation import validation_rows
from tests.child_process import TWO_CPU_PROCESSES, run_script
from tests.conftest import tiny_training_overrides

DDP_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import lightning as L

    from msadkit.config import load_config
    from msadkit.engine.train.trainer import train

    out = Path(sys.argv[1])


    class RecordLocalLosses(L.Callback):
        # Each rank's own losses of the iteration, as its training step logged them.
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            with open(out / f"rank{trainer.global_rank}.jsonl", "a") as handle:
                handle.write(json.dumps({"iter": trainer.global_step, **values}) + "\\n")


    train(load_config("fcos_demo", sys.argv[2:]), callbacks=[RecordLocalLosses()], evaluate=False)
    """
)


def read_jsonl(path):
    return {row["iter"]: row for row in map(json.loads, path.read_text().splitlines())}


def csv_rows(run):
    (path,) = (run / "logs").glob("version_*/metrics.csv")
    with path.open() as handle:
        return [row for row in csv.DictReader(handle) if row.get("train/loss")]


def test_two_process_ddp_logs_the_mean_of_the_ranks_losses(tmp_path):
    run = tmp_path / "run"
    args = tiny_training_overrides(run, max_iter=3) + [
        *TWO_CPU_PROCESSES,
        # Each rank sees its own 2 of the 8 images per step: different losses.
        "data.synthetic.num_train=8",
        "trainer.loggers=[csv]",
    ]
    run_script(DDP_SCRIPT, tmp_path, str(tmp_path), *args, timeout=300)
    ranks = [read_jsonl(tmp_path / f"rank{rank}.jsonl") for rank in (0, 1)]
    records = {record["iter"]: record for record in read_metrics(run / "metrics.jsonl")}
    assert sorted(records) == sorted(ranks[0]) == sorted(ranks[1]) == [1, 2, 3]
    terms = [key for key in ranks[0][1] if key != "iter"]
    assert "train/loss" in terms and len(terms) > 1
    # The ranks' batches differ, so rank 0's values are not the mean.
    assert all(ranks[0][i]["train/loss"] != ranks[1][i]["train/loss"] for i in records)
    means = {i: {key: (ranks[0][i][key] + ranks[1][i][key]) / 2 for key in terms} for i in records}
    for i, record in records.items():
        assert {key: record[key[len("train/"):]] for key in terms} == pytest.approx(means[i], rel=1e-9), i
    logged = {int(row["step"]): row for row in csv_rows(run)}
    assert sorted(logged) == [1, 2, 3]
    for i in records:
        assert {key: float(logged[i][key]) for key in terms} == pytest.approx(means[i], rel=1e-6), i


def test_logger_steps_are_the_iterations_of_metrics_jsonl(tmp_path, monkeypatch):
    """MLflow read back through its own client (the CSV logger where MLflow is not installed)."""
    run = tmp_path / "run"
    try:
        import mlflow
    except ImportError:
        mlflow = None
    uri = (tmp_path / "mlruns").as_uri()
    loggers = "[csv, mlflow]" if mlflow is not None else "[csv]"
    if mlflow is not None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Set then removed so that monkeypatch restores the variable msadkit sets for a file store.
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
        monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    settings = [f"trainer.loggers={loggers}", f"trainer.mlflow.tracking_uri={uri}"]
    settings += ["trainer.log_period=3", "trainer.eval_period=3"]
    config = load_config("fcos_demo", tiny_training_overrides(run, max_iter=6) + settings)
    train(config, evaluate=False)
    records = read_metrics(run / "metrics.jsonl")
    losses = {record["iter"]: record["loss"] for record in records if "loss" in record}
    aps = {row["iter"]: row["val/AP"] for row in validation_rows(records)}
    assert sorted(losses) == sorted(aps) == [3, 6]

    csv_losses = {int(row["step"]): float(row["train/loss"]) for row in csv_rows(run)}
    assert csv_losses == pytest.approx(losses, rel=1e-6)
    if mlflow is None:
        return
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    (found,) = client.search_runs([client.get_experiment_by_name("msadkit").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "train/loss")}
    assert history == pytest.approx(losses, rel=1e-6)
    ap_steps = sorted(m.step for m in client.get_metric_history(found.info.run_id, "val/AP"))
    assert ap_steps == sorted(history) == [3, 6]
