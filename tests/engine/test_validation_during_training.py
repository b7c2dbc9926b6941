"""trainer.eval_period: COCO AP inside Lightning's validation loop, metrics.jsonl rows, model_best.pth."""

from __future__ import annotations

import csv
import json
import math
import sys

import lightning as L
import numpy as np
import pytest
import torch

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.evaluation.run_evaluation import evaluate_run
from msadkit.engine.train.metrics_logger import append_record, read_metrics
from msadkit.engine.train.task import DetectionTask
from msadkit.engine.train.trainer import train
from msadkit.engine.train.validation import BEST_WEIGHTS_NAME, PeriodicValidation, validation_rows
from msadkit.errors import ConfigError, MsadkitError
from tests.conftest import tiny_training_overrides

VAL_KEYS = ["iter", "val/AP", "val/AP50", "val/AP75", "val/APs", "val/APm", "val/APl"]


def same_metric(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real FCOS run of 40 iterations evaluated every 10 (long enough for a non-zero AP)."""
    run = tmp_path_factory.mktemp("validation") / "run"
    overrides = tiny_training_overrides(run, max_iter=40) + ["trainer.eval_period=10", "trainer.log_period=10"]
    train(load_config("fcos_demo", overrides))
    return run


def test_rows_every_period_with_exactly_the_val_keys(trained_run):
    rows = validation_rows(read_metrics(trained_run / "metrics.jsonl"))
    assert [row["iter"] for row in rows] == [10, 20, 30, 40]
    assert all(list(row) == VAL_KEYS for row in rows)
    # Each validation row follows the training row of its iteration.
    iters = [record["iter"] for record in read_metrics(trained_run / "metrics.jsonl")]
    assert iters == [10, 10, 20, 20, 30, 30, 40, 40]


def test_last_row_is_the_evaluation_of_the_final_model(trained_run):
    last = validation_rows(read_metrics(trained_run / "metrics.jsonl"))[-1]
    final = json.loads((trained_run / "eval.json").read_text())
    for key, value in final.items():
        assert same_metric(last[f"val/{key}"], value), key


def test_model_best_holds_the_weights_of_the_best_row(trained_run):
    rows = validation_rows(read_metrics(trained_run / "metrics.jsonl"))
    best_ap = max(row["val/AP"] for row in rows)
    metrics = evaluate_run(trained_run, weights=trained_run / BEST_WEIGHTS_NAME, device="cpu", write=False)
    assert metrics["AP"] == best_ap
    best = torch.load(trained_run / BEST_WEIGHTS_NAME, map_location="cpu", weights_only=False)
    final = torch.load(trained_run / "model_final.pth", map_location="cpu", weights_only=False)
    assert best.keys() == final.keys() == {"model", "config"}
    assert best["model"].keys() == final["model"].keys()
    assert best["config"] == final["config"]


def test_loggers_receive_the_val_metrics(trained_run):
    with open(trained_run / "logs" / "version_0" / "metrics.csv") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("val/AP")]
    rows = validation_rows(read_metrics(trained_run / "metrics.jsonl"))
    assert [int(row["step"]) for row in logged] == [10, 20, 30, 40]
    assert [float(row["val/AP"]) for row in logged] == pytest.approx([row["val/AP"] for row in rows], rel=1e-6)


def test_both_backends_give_the_same_ap(trained_run, capsys):
    pytest.importorskip("faster_coco_eval")
    reference = evaluate_run(trained_run, device="cpu", write=False)
    assert main(["evaluate", str(trained_run), "--device", "cpu", "--backend", "faster_coco_eval"]) == 0
    assert "AP50" in capsys.readouterr().out
    fast = json.loads((trained_run / "eval.json").read_text())
    for key, value in reference.items():
        assert fast[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_evaluate_refuses_an_unknown_backend(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--device", "cpu", "--backend", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--backend" in err and "faster_coco_eval" in err


def test_evaluate_without_fast_eval_names_the_extra(trained_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    assert main(["evaluate", str(trained_run), "--device", "cpu", "--backend", "faster_coco_eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install msadkit[fast-eval]" in err


def oracle_validation_step(self, batch, batch_idx):
    """Detections made from the ground truth, whose AP is known, changing with the iteration.

    Iteration 2: every box moved off its object (AP 0). Iteration 4: the ground truth itself
    (AP 100). Iteration 6: the ground truth of even image ids only.
    """
    step = int(self.global_step)
    detections = []
    for target in batch.targets:
        boxes, labels = target["boxes"].float(), target["labels"]
        if step == 2:
            boxes = boxes + 1000.0
        if step == 6 and int(target["image_id"]) % 2:
            boxes, labels = boxes[:0], labels[:0]
        detections.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": labels})
    return detections


def expected_ap_of_even_images(gt_json):
    """COCO AP when exactly the ground truth of even image ids is detected (score 1, IoU 1).

    Per category with ground truth, precision is 1 up to the recall r it reaches and 0 beyond, so
    its AP is the share of the 101 recall thresholds t <= r; AP is the mean over those categories.
    """
    data = json.loads(gt_json.read_text())
    thresholds = np.linspace(0.0, 1.0, 101)
    per_category = []
    for category in data["categories"]:
        anns = [ann for ann in data["annotations"] if ann["category_id"] == category["id"] and not ann.get("iscrowd")]
        if anns:
            recall = sum(ann["image_id"] % 2 == 0 for ann in anns) / len(anns)
            per_category.append(float(np.mean(thresholds <= recall + 1e-12)))
    return 100.0 * float(np.mean(per_category))


class WeightsAtValidation(L.Callback):
    def __init__(self):
        self.weights = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_ap_rows_and_best_weights_follow_known_detections(tmp_path, monkeypatch):
    monkeypatch.setattr(DetectionTask, "validation_step", oracle_validation_step)
    run = tmp_path / "run"
    # Test images resized 64 -> 96: the rows are right only if boxes go back to original pixels.
    overrides = tiny_training_overrides(run, max_iter=6) + [
        "trainer.eval_period=2",
        "data.synthetic.num_val=6",
        "data.test_short_side=96",
        "data.test_max_size=96",
    ]
    config = load_config("fcos_demo", overrides)
    captured = WeightsAtValidation()
    train(config, callbacks=[captured], evaluate=False)

    rows = validation_rows(read_metrics(run / "metrics.jsonl"))
    assert [row["iter"] for row in rows] == [2, 4, 6]
    from msadkit.data.build import resolve_data_paths

    expected = expected_ap_of_even_images(resolve_data_paths(config)["val_json"])
    assert 0.0 < expected < 100.0
    assert [row["val/AP"] for row in rows] == pytest.approx([0.0, 100.0, expected], abs=1e-9)
    assert rows[1]["val/AP50"] == rows[1]["val/AP75"] == 100.0

    best = torch.load(run / BEST_WEIGHTS_NAME, map_location="cpu", weights_only=False)["model"]
    for key, value in captured.weights[4].items():
        torch.testing.assert_close(best[key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(best[key], value) for key, value in captured.weights[6].items())


def test_resume_adds_the_later_rows_once(tmp_path):
    run = tmp_path / "run"
    shorter = tiny_training_overrides(run, max_iter=4) + ["trainer.eval_period=2"]
    train(load_config("fcos_demo", shorter), evaluate=False)
    longer = tiny_training_overrides(run, max_iter=6) + ["trainer.eval_period=2"]
    train(load_config("fcos_demo", longer), resume=True, evaluate=False)
    assert [row["iter"] for row in validation_rows(read_metrics(run / "metrics.jsonl"))] == [2, 4, 6]


def test_resumed_run_starts_from_the_best_kept_row(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"iter": 2, "val/AP": 5.0}, {"iter": 2, "loss": 1.0}, {"iter": 4, "val/AP": 7.5}]
    rows.append({"iter": 6, "val/AP": 6.0})
    for row in rows:
        append_record(metrics, row)
    config = load_config("fcos_demo", [f"output_dir={tmp_path}"])
    callback = PeriodicValidation(config, tmp_path, metrics, export=lambda model: model.state_dict())

    class RankZero:
        is_global_zero = True

    callback.on_fit_start(RankZero(), None)
    assert callback.best_ap == 7.5


@pytest.mark.parametrize(
    "override, words",
    [
        ("trainer.eval_period=3", ["trainer.eval_period (3)", "solver.max_iter (2)"]),
        ("trainer.eval_period=-1", ["trainer.eval_period", "-1"]),
        ("trainer.eval_backend=cocoapi", ["trainer.eval_backend", "cocoapi", "pycocotools, faster_coco_eval"]),
    ],
)
def test_bad_validation_settings_are_one_clear_error(tmp_path, override, words):
    run = tmp_path / "run"
    # A negative period is refused when the config loads, the others when training starts.
    with pytest.raises(ConfigError) as error:
        train(load_config("fcos_demo", tiny_training_overrides(run, max_iter=2) + [override]))
    for word in words:
        assert word in str(error.value)
    assert not run.exists()


def test_cli_eval_period_larger_than_max_iter_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(["train", "fcos_demo", *tiny_training_overrides(run, max_iter=2), "trainer.eval_period=5"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and "trainer.eval_period (5)" in err and "solver.max_iter (2)" in err
    assert not run.exists()


def test_missing_fast_eval_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    run = tmp_path / "run"
    config = load_config("fcos_demo", tiny_training_overrides(run) + ["trainer.eval_backend=faster_coco_eval"])
    with pytest.raises(MsadkitError, match=r"pip install msadkit\[fast-eval\]"):
        train(config)
    assert not run.exists()


def test_evaluate_on_a_larger_split_writes_an_evaluation_folder(trained_run, tmp_path, capsys):
    """`msadkit evaluate RUN data.synthetic.num_val=N --output-dir D`: the run's weights on N validation
    images, in a folder that reads like a run folder; the run's own eval.json stays its own."""
    own = json.loads((trained_run / "eval.json").read_text())
    same = tmp_path / "same_split"
    # The run's own split, written elsewhere: the very numbers of its own evaluation.
    assert main(["evaluate", str(trained_run), "data.synthetic.num_val=4", "--output-dir", str(same)]) == 0
    assert json.loads((same / "eval.json").read_text()) == pytest.approx(own, nan_ok=True)

    larger = tmp_path / "larger"
    assert main(["evaluate", str(trained_run), "data.synthetic.num_val=12", "--output-dir", str(larger),
                 "--bootstrap", "20"]) == 0
    assert "evaluation SE" in capsys.readouterr().out
    config = load_config(larger / "config.yaml")
    assert config["data"]["synthetic"]["num_val"] == 12
    detections = json.loads((larger / "detections_val.json").read_text())
    assert max(entry["image_id"] for entry in detections) > 4  # images beyond the training-time split
    bootstrap = json.loads((larger / "bootstrap_ap.json").read_text())
    assert bootstrap["num_images"] == 12 and bootstrap["num_samples"] == 20
    assert bootstrap["metrics"]["AP"]["value"] == json.loads((larger / "eval.json").read_text())["AP"]
    assert json.loads((trained_run / "eval.json").read_text()) == own


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["data.synthetic.num_val=12"], "needs an output folder (--output-dir)"),
        (["data.synthetic.num_vall=12", "--output-dir", "{out}"], "unknown config key 'data.synthetic.num_vall'"),
        (["--bootstrap", "1", "--output-dir", "{out}"], "--bootstrap must be at least 2"),
        (["--bootstrap", "20", "--branch", "high"], "drop --branch and --weights"),
    ],
)
def test_evaluate_refuses_bad_settings_before_writing(trained_run, tmp_path, capsys, arguments, message):
    out = tmp_path / "evaluation"
    own = (trained_run / "eval.json").read_text()
    arguments = [item.replace("{out}", str(out)) for item in arguments]
    assert main(["evaluate", str(trained_run), *arguments, "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and (trained_run / "eval.json").read_text() == own
