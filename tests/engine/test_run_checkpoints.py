"""The run folder's periodic checkpoints (the newest ``trainer.keep_checkpoints``, none left behind by
a resume), ``metrics.jsonl``'s ``time`` across a resume, and a short run's terminal output: an
iteration progress bar and no Lightning warnings."""

from __future__ import annotations

import time

import lightning as L
import pytest

from msadkit.config import load_config
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.utils.checkpoint import load_checkpoint_file
from tests.child_process import run_python
from tests.conftest import tiny_training_overrides
from tests.engine.test_reliability_exact_resume import InterruptAt, Interrupted


def checkpoint_names(run):
    return sorted(path.name for path in (run / "checkpoints").iterdir())


def test_the_newest_periodic_checkpoints_are_kept(tmp_path):
    run = tmp_path / "run"
    config = load_config("fcos_demo", tiny_training_overrides(run, max_iter=5) + ["trainer.keep_checkpoints=3"])
    train(config, evaluate=False)
    assert checkpoint_names(run) == [
        "iter_step=0000003.ckpt",
        "iter_step=0000004.ckpt",
        "iter_step=0000005.ckpt",
        "last.ckpt",
    ]
    for step in (3, 4, 5):
        assert load_checkpoint_file(run / "checkpoints" / f"iter_step={step:07d}.ckpt")["global_step"] == step
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 5


def test_a_resume_removes_the_checkpoints_it_supersedes(tmp_path):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    keep_one = ["trainer.keep_checkpoints=1"]
    train(load_config("fcos_demo", tiny_training_overrides(run, max_iter=2) + keep_one), evaluate=False)
    (run / "model_final.pth").unlink()
    # A kill between the iteration file and last.ckpt, and a later file a killed writer cut short:
    # the run resumes from iter_step=0000002.ckpt.
    (checkpoints / "last.ckpt").unlink()
    (checkpoints / "iter_step=0000009.ckpt").write_bytes(b"cut short")
    train(load_config("fcos_demo", tiny_training_overrides(run, max_iter=4) + keep_one), resume=True, evaluate=False)
    assert checkpoint_names(run) == ["iter_step=0000004.ckpt", "last.ckpt"]


class SlowFirstIteration(L.Callback):
    """One second inside iteration 1: the time metrics.jsonl records for it has a known lower bound."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 0:
            time.sleep(1.0)


def test_metrics_time_continues_across_a_resume(tmp_path):
    run = tmp_path / "run"
    args = tiny_training_overrides(run, max_iter=5)
    with pytest.raises(Interrupted):
        # A crash before iteration 4, its checkpoint written.
        train(load_config("fcos_demo", args), callbacks=[SlowFirstIteration(), InterruptAt(3)], evaluate=False)
    train(load_config("fcos_demo", args), resume=True, evaluate=False)
    times = {record["iter"]: record["time"] for record in read_metrics(run / "metrics.jsonl")}
    assert sorted(times) == [1, 2, 3, 4, 5]
    assert times[1] >= 1.0
    # The resumed run starts from the checkpoint's training time, not from 0.
    assert times[3] < times[4] < times[5]


def test_a_short_run_shows_an_iteration_bar_and_no_lightning_warning(tmp_path):
    """A log period longer than an epoch (4 iterations) once made Lightning warn; the bar said ``Epoch 1/-2``."""
    args = tiny_training_overrides(tmp_path / "run", max_iter=6)
    args += ["trainer.log_period=20", "trainer.progress_bar=true"]
    result = run_python("-m", "msadkit.cli", "train", "fcos_demo", *args, "--no-eval", cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert "Warning" not in output and "site-packages" not in output, output[-3000:]
    assert "Epoch" not in output and "/-2" not in output
    assert "6/6" in result.stdout and "train" in result.stdout
