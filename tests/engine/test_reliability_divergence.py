"""A diverging run stops with one line, keeps its last checkpoints and writes no model_final.pth."""

from __future__ import annotations

import math

import pytest
import torch

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.train.trainer import train
from msadkit.engine.train.training_health import DivergenceMonitor, TrainingDiverged, TrainingHealth, largest_parameter
from msadkit.errors import ConfigError
from msadkit.utils.checkpoint import load_checkpoint_file

# Clipping keeps every gradient finite, so only the divergence checks can stop this run.
EXPLODING = ["solver.base_lr=10000", "solver.clip_grad_norm=10"]


def test_huge_learning_rate_under_clipping_is_caught(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    config = load_config("fcos_demo", tiny_overrides(run, max_iter=8) + EXPLODING)
    with pytest.raises(TrainingDiverged) as caught:
        train(config)
    message = str(caught.value)
    assert "\n" not in message
    assert "training diverged at iteration" in message
    for term in ("loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"):
        assert term in message
    diverged_at = int(message.split("iteration ")[1].split(":")[0])
    assert not (run / "model_final.pth").exists()
    assert not (run / "eval.json").exists()
    # The last checkpoint is the one written before the diverged iteration.
    assert load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == diverged_at - 1


def test_without_the_checks_the_same_run_finishes_as_if_fine(tmp_path, tiny_overrides):
    # The failure the checks guard against: exit 0 and a model_final.pth of exploded weights.
    run = tmp_path / "run"
    overrides = tiny_overrides(run, max_iter=4) + EXPLODING + ["trainer.divergence.enabled=false"]
    train(load_config("fcos_demo", overrides), evaluate=False)
    weights = torch.load(run / "model_final.pth", weights_only=False)["model"]
    assert max(v.abs().max().item() for v in weights.values() if v.is_floating_point()) > 1e5


def test_command_line_prints_one_line_and_exits_2(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    assert main(["train", "fcos_demo", "--no-eval", *tiny_overrides(run, max_iter=8), *EXPLODING]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("msadkit train: error: training diverged at iteration")
    assert not (run / "model_final.pth").exists()


def test_loss_is_compared_with_the_running_median_of_its_first_iterations():
    monitor = DivergenceMonitor(reference_iters=3, factor=10.0, max_abs_param=1e5)
    assert monitor.problem({"a": 2.0, "b": 1.0}, 1.0) is None  # reference 3
    assert monitor.problem({"a": 20.0}, 1.0) is None  # 20 <= 10 x 3; reference median(3, 20) = 11.5
    assert monitor.problem({"a": 4.0}, 1.0) is None  # reference frozen at median(3, 20, 4) = 4
    assert monitor.problem({"a": 39.0}, 1.0) is None
    problem = monitor.problem({"a": 41.0}, 1.0)
    assert problem is not None and "41" in problem and "median 4" in problem
    # Within the first iterations an explosion is caught against the running median.
    early = DivergenceMonitor(reference_iters=20, factor=100.0, max_abs_param=1e5)
    assert early.problem({"a": 2.8}, 1.0) is None
    assert early.problem({"a": 68.9}, 1.0) is None
    assert "median 35.85" in early.problem({"a": 8.1e6}, 1.0)
    assert early.early_losses == [2.8, 68.9]  # the exploded loss does not enter the reference


def test_huge_or_non_finite_parameters_are_divergence():
    monitor = DivergenceMonitor(reference_iters=2, factor=100.0, max_abs_param=1e3)
    assert "magnitude 2e+03" in monitor.problem({"a": 1.0}, 2e3)
    assert monitor.problem({"a": 1.0}, math.nan) == "non-finite parameters"
    assert monitor.problem({"a": math.inf}, 1.0) == "a non-finite loss"
    params = [torch.tensor([1.0, -7.5]), torch.zeros(0), torch.tensor([[3.0]])]
    assert largest_parameter(params) == 7.5
    assert math.isnan(largest_parameter([torch.tensor([1.0, math.nan])]))
    assert largest_parameter([torch.tensor([math.inf])]) == math.inf


@pytest.mark.parametrize(
    "override",
    [
        "trainer.divergence.factor=1",
        "trainer.divergence.reference_iters=0",
        "trainer.divergence.max_abs_param=0",
        "trainer.divergence.param_check_period=0",
    ],
)
def test_bad_divergence_settings_are_refused_before_anything_is_written(tmp_path, tiny_overrides, override):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="trainer.divergence"):
        train(load_config("fcos_demo", tiny_overrides(run) + [override]))
    assert not run.exists()


def test_parameters_are_checked_periodically_and_before_every_checkpoint_and_the_end():
    divergence = {"reference_iters": 2, "factor": 100.0, "max_abs_param": 1e5, "param_check_period": 10}
    health = TrainingHealth(divergence, checkpoint_period=4, max_iter=23)
    checked = [step for step in range(1, 24) if health._checks_parameters(step)]
    assert checked == [4, 8, 10, 12, 16, 20, 23]
