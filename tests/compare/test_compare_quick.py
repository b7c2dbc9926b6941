"""`msadkit compare --quick` end to end: real training runs at tiny sizes, the table and figure, reuse
of finished runs, refusal of runs trained with other settings; tuning on the tuning seed (slow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from msadkit.cli import main


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _report(row):
    return Path(row["run"]) / "report"


def _job_config(run_dir):
    return json.loads((run_dir / "job.json").read_text())["config"]


def test_quick_cross_resolution_comparison_trains_tabulates_and_reuses(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "comparison"
    command = ["compare", "--quick", "--track", "cross-resolution", "--out", str(out)]
    assert main(command) == 0
    track = out / "cross-resolution"
    printed = capsys.readouterr().out
    assert "**cross resolution: high-res teachers (256 px) -> low-res student (0.5x copy); n = 2 seeds (0, 1)" \
        in printed

    models = {row["model"]: row for row in _rows(track / "comparison.csv")}
    assert list(models) == ["fcos_high", "msad_teacher", "baseline", "control", "teacher_init", "msad_feature@msad",
                            "gid"]
    for name in ("control", "teacher_init", "msad_feature@msad", "gid"):
        assert models[name]["ci_low"] != "" and models[name]["seeds"] == "0 1"
    assert models["gid"]["p_holm"] != "" and models["control"]["p_holm"] == ""
    # MSAD against its own ablation and every method against the step-matched control, paired by seed.
    assert models["msad_feature@msad"]["ablation_ci_low"] != "" and models["gid"]["ablation_ci_low"] == ""
    assert models["gid"]["control_ci_low"] != ""
    runs = _rows(track / "comparison_runs.csv")
    assert len(runs) == 14
    # Every run validated at each quarter of its length and kept its detections for the bootstrap.
    assert {row["plateaued"] for row in runs} <= {"True", "False"} and all(row["AP_se"] != "" for row in runs)
    assert {row["iterations"] for row in runs if row["model"] == "control"} == {"8"}
    for name in ("comparison.md", "comparison.tex", "comparison.png"):
        assert (track / name).stat().st_size > 0

    # Every run's reported AP is its final weights on the larger split (6 images; 4 while training),
    # evaluated after training with the bootstrap behind its SE.
    for row in runs:
        report = json.loads((_report(row) / "bootstrap_ap.json").read_text())
        assert report["num_images"] == 6 and report["num_samples"] == 200
        assert float(row["AP"]) == pytest.approx(json.loads((_report(row) / "eval.json").read_text())["AP"], abs=1e-9)
    assert _job_config(track / "seed0" / "gid")["data"]["synthetic"]["num_val"] == 4

    # One seed, one start: every student of seed 1 has trainer.seed 1 and the same backbone file.
    students = [_job_config(track / "seed1" / model) for model in ("baseline", "control", "msad_feature@msad", "gid")]
    assert {config["trainer"]["seed"] for config in students} == {1}
    assert len({config["model"]["backbone"]["weights"] for config in students}) == 1
    assert _job_config(track / "seed1" / "gid")["distill"]["cross_resolution"] is True

    # Again: every run is reused, nothing trains.
    final = track / "seed0" / "gid" / "model_final.pth"
    evaluation = track / "seed0" / "gid" / "report" / "eval.json"
    before, evaluated = final.stat().st_mtime_ns, evaluation.stat().st_mtime_ns
    assert main(command) == 0
    assert final.stat().st_mtime_ns == before and evaluation.stat().st_mtime_ns == evaluated
    capsys.readouterr()
    # Other settings for the same folders: refused before anything runs, naming what differs.
    assert main([*command, "--iterations", "5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("msadkit compare: error: ") and "solver.max_iter" in error
    assert final.stat().st_mtime_ns == before


@pytest.mark.slow
def test_quick_tuning_records_the_weight_that_the_reported_runs_then_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "comparison"
    common = ["compare", "--quick", "--track", "same-resolution", "--methods", "fitnet", "--out", str(out)]
    assert main([*common, "--tune"]) == 0
    tuning = json.loads((out / "same-resolution" / "tuning.json").read_text())
    assert tuning["tuning_seed"] == 100
    entry = tuning["methods"]["fitnet"]
    assert [c["scale"] for c in entry["candidates"]] == [1.0, 0.25, 4.0]
    best = max(entry["candidates"], key=lambda c: c["AP"])["AP"]
    chosen = next(c for c in entry["candidates"] if c["AP"] == best)["scale"]
    assert entry["chosen_scale"] == chosen
    assert not (out / "same-resolution" / "seed0").exists()  # tuning trains no reported run

    assert main(common) == 0
    config = _job_config(out / "same-resolution" / "seed0" / "fitnet")
    assert config["distill"]["losses"][0]["weight"] == chosen
    table = (out / "same-resolution" / "comparison.md").read_text()
    assert "Weights tuned on seed 100 only (never reported)" in table and f"fitnet {chosen:g}x" in table
