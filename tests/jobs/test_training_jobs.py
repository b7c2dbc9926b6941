"""A real `msadkit train` job: the resolved config it records, its reuse and refusal, and its resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from msadkit.jobs import (
    JobConfigMismatchError,
    ReuseDecision,
    config_differences,
    decide_reuse,
    read_job_record,
    run_jobs,
    training_job,
)
from tests.conftest import tiny_training_overrides


def _tiny_overrides(run_dir) -> list[str]:
    # The shared tiny settings, less output_dir (the job's own) and the length (--iterations).
    return [o for o in tiny_training_overrides(run_dir) if not o.startswith(("output_dir=", "solver.max_iter="))]


def test_training_job_records_the_resolved_config_is_reused_refused_and_resumed(tmp_path):
    run_dir = tmp_path / "run"
    job = training_job("tiny", "fcos_demo", run_dir, _tiny_overrides(run_dir), iterations=2)
    outcome, = run_jobs([job], threads=1, progress=None, poll_interval_s=0.2)
    assert outcome.status == "finished", (run_dir / "train.log").read_text()[-3000:]
    # The config the runner resolved is the one the trainer wrote: the reuse rule compares like with like.
    trained = json.loads(json.dumps(yaml.safe_load((run_dir / "config.yaml").read_text())))
    assert config_differences(trained, job.config) == [] and job.config["solver"]["max_iter"] == 2
    assert read_job_record(run_dir)["config"] == job.config

    assert run_jobs([job], progress=None)[0].status == "reused"
    (run_dir / "job.json").unlink()
    assert decide_reuse(job) is ReuseDecision.REUSE  # a folder trained without the runner: its config.yaml

    faster = [*_tiny_overrides(run_dir), "solver.base_lr=0.5"]
    changed = training_job("tiny", "fcos_demo", run_dir, faster, iterations=2)
    refused = rf"{run_dir} holds a finished run .*solver\.base_lr is 0\.01 there, 0\.5 requested"
    with pytest.raises(JobConfigMismatchError, match=refused):
        run_jobs([changed], progress=None)

    # Interrupted after its last checkpoint: run again, it continues from the checkpoint.
    (run_dir / "eval.json").unlink()
    (run_dir / "model_final.pth").unlink()
    with pytest.raises(JobConfigMismatchError, match="an interrupted run to resume"):
        decide_reuse(changed)  # resuming would mix two configs in one run
    outcome, = run_jobs([job], threads=1, progress=None, poll_interval_s=0.2)
    assert outcome.status == "finished", (run_dir / "train.log").read_text()[-3000:]
    assert read_job_record(run_dir)["command"][-1] == "--resume" and (run_dir / "eval.json").is_file()


@pytest.mark.parametrize(
    ("config", "overrides", "iterations"),
    [
        # A loss entry without its ramp: the run-length rule writes the term's scaled default in.
        ("msad/msad_student_demo", ["distill.losses=[{type: msad_feature, weight: 0.0}]", "distill.teacher=t"], 40),
        ("adl/fcos_adl_demo", ["solver.base_lr=0.05", "trainer.seed=3"], None),
        ("fcos_demo", ["output_dir=elsewhere"], 7),  # --output-dir wins, as in the command
    ],
)
def test_the_recorded_config_is_the_one_msadkit_train_resolves(monkeypatch, tmp_path, config, overrides, iterations):
    from msadkit.cli import main

    trained = []
    monkeypatch.setattr("msadkit.engine.train.trainer.train", lambda config, **_: trained.append(config) or tmp_path)
    length = ["--iterations", str(iterations)] if iterations is not None else []
    assert main(["train", config, *overrides, "--output-dir", str(tmp_path / "run"), *length]) == 0
    job = training_job("x", config, tmp_path / "run", overrides, iterations=iterations)
    assert job.config == json.loads(json.dumps(trained[0]))


def test_a_fresh_process_resolves_a_terms_registered_defaults_too(tmp_path):
    # The runner's own process may not have imported the distillation terms yet; `msadkit train` has.
    code = (
        "import json; from msadkit.jobs import training_job; "
        "job = training_job('x', 'msad/msad_student_demo', 'run', "
        "['distill.losses=[{type: msad_feature, weight: 0.0}]'], iterations=40); "
        "print(json.dumps(job.config['distill']['losses']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    losses = json.loads(result.stdout.splitlines()[-1])
    assert losses[0]["ramp_iters"] == 67  # the term's default 500 at 40 of the config's 300 iterations
