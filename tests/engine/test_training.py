"""End-to-end training through the Lightning engine on tiny synthetic data."""

import json

import pytest
import torch

from msadkit.config import load_config
from msadkit.engine.evaluation.run_evaluation import evaluate_run
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
def test_train_writes_a_complete_run_folder(tmp_path, tiny_overrides, arch):
    run = tmp_path / "run"
    config = load_config(f"{arch}_demo", tiny_overrides(run, arch=arch))
    assert train(config) == run
    for name in ("config.yaml", "metrics.jsonl", "model_final.pth", "eval.json", "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2]
    assert all(r["loss"] > 0 for r in records)
    metrics = json.loads((run / "eval.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(v != v or 0.0 <= v <= 100.0 for v in metrics.values())  # NaN allowed for empty buckets
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == arch and summary["width"] == 0.25 and summary["capacity"] == pytest.approx(0.068, abs=0.001)
    # The final weights load strictly into a freshly built model and evaluate to the same numbers.
    assert evaluate_run(run, write=False) == pytest.approx(metrics, nan_ok=True)


def test_resume_continues_from_the_saved_iteration(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=2)), evaluate=False)
    saved = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 2
    weights_at_2 = {k: v.clone() for k, v in saved["state_dict"].items()}

    (run / "metrics.jsonl").unlink()
    (run / "model_final.pth").unlink()
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=4)), resume=True, evaluate=False)
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl")] == [3, 4]
    resumed = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4
    # Training went on from the saved weights: they changed, and the optimiser state came along.
    changed = [k for k, v in resumed["state_dict"].items() if v.is_floating_point() and not torch.equal(v, weights_at_2[k])]
    assert changed
    assert resumed["optimizer_states"][0]["state"]


def test_resume_without_checkpoint_and_overwrite_are_refused(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        train(load_config("fcos_demo", tiny_overrides(run)), resume=True)
    assert not run.exists()
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=1)), evaluate=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config("fcos_demo", tiny_overrides(run, max_iter=1)))


def test_model_final_holds_a_plain_detector(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    config = load_config("fcos_demo", tiny_overrides(run, max_iter=1))
    train(config, evaluate=False)
    saved = load_checkpoint_file(run / "model_final.pth")
    assert set(saved) == {"model", "config"}
    assert set(saved["model"]) == set(build_model(config).state_dict())
