"""SIGTERM and SIGINT during training: the checkpoint of the iteration they stop after, then
``TrainingInterrupted`` (exit status 143 / 130 and the resume command on the command line), and a
resumed run that ends with the uninterrupted run's weights bit for bit.

The signals here are sent by the training process to itself at a chosen iteration; real processes
signalled from outside (loader workers, DDP) are in ``test_graceful_stop_processes.py``.
"""

from __future__ import annotations

import os
import shlex
import signal

import lightning as L
import pytest

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.train import trainer as trainer_module
from msadkit.engine.train.graceful_stop import StopSignals, TrainingInterrupted
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from tests.conftest import tiny_training_overrides
from tests.engine.test_reliability_exact_resume import MAX_ITER, assert_same_weights, final_state, overrides

# No periodic checkpoint falls inside the run: the only one written is the stop's.
NO_PERIODIC = "trainer.checkpoint_period=100"


class SignalAt(L.Callback):
    """Sends ``signum`` to this process before iteration ``step + 1`` runs; training stops after it."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run every interrupted and resumed run of this module must end equal to."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(load_config("fcos_demo", overrides(tiny_training_overrides, run)), evaluate=False)
    return run


def checkpoint_names(run):
    return sorted(path.name for path in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_iteration_with_its_checkpoint(
    tmp_path, tiny_overrides, uninterrupted, signum, status
):
    run = tmp_path / "run"
    args = overrides(tiny_overrides, run, NO_PERIODIC)
    handler_before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as stop:
        train(load_config("fcos_demo", args), callbacks=[SignalAt(2, signum)], evaluate=False)
    assert stop.value.exit_status == status and stop.value.signum == signum
    assert stop.value.iteration == 3 and stop.value.checkpoint == str(run / "checkpoints" / "last.ckpt")
    assert final_state(run)[0] == 3
    assert checkpoint_names(run) == ["iter_step=0000003.ckpt", "last.ckpt"]
    assert [record["iter"] for record in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert not (run / "model_final.pth").exists()
    assert signal.getsignal(signum) == handler_before  # given back when training stops

    train(load_config("fcos_demo", args), resume=True, evaluate=False)
    assert_same_weights(uninterrupted, run)
    assert [record["iter"] for record in read_metrics(run / "metrics.jsonl")] == list(range(1, MAX_ITER + 1))


def test_the_command_line_prints_the_resume_command_and_exits_143(
    tmp_path, tiny_overrides, uninterrupted, monkeypatch, capsys
):
    run = tmp_path / "run"
    args = overrides(tiny_overrides, run, NO_PERIODIC)
    real_train = trainer_module.train
    # `msadkit train` imports train when it runs: the signal callback goes in through the module.
    monkeypatch.setattr(
        trainer_module, "train", lambda config, **kw: real_train(config, callbacks=[SignalAt(4, signal.SIGTERM)], **kw)
    )
    status = main(["train", "fcos_demo", *args, "--no-eval"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 143
    lines = [line for line in err if line.startswith("msadkit train:")]
    assert len(lines) == 1, err
    assert "SIGTERM at iteration 5 of 6" in lines[0] and str(run / "checkpoints" / "last.ckpt") in lines[0]
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:3] == ["msadkit", "train", "fcos_demo"] and command[-1] == "--resume"
    assert command[command.index("--output-dir") + 1] == str(run) and "--no-eval" in command

    monkeypatch.setattr(trainer_module, "train", real_train)
    assert main(command[1:]) == 0
    assert_same_weights(uninterrupted, run)


def test_a_sigint_handler_of_the_caller_keeps_the_interrupt(tmp_path, tiny_overrides):
    """The notebooks' live view handles Kernel > Interrupt itself: training does not take it over."""
    run = tmp_path / "run"
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        config = load_config("fcos_demo", overrides(tiny_overrides, run))
        train(config, callbacks=[SignalAt(2, signal.SIGINT)], evaluate=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]
    assert final_state(run)[0] == MAX_ITER


def test_a_second_signal_stops_at_once():
    signals = StopSignals()
    before = signal.getsignal(signal.SIGINT)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == before
    finally:
        signals.restore()
        signal.signal(signal.SIGINT, before)


def test_a_stop_at_a_validation_iteration_keeps_its_validation(tmp_path, tiny_overrides):
    """Lightning validates after the iteration's checkpoint and skips that validation on resume:
    the stop waits for it, so metrics.jsonl holds every validation row once."""
    run = tmp_path / "run"
    args = overrides(tiny_overrides, run, NO_PERIODIC, "trainer.eval_period=3")
    with pytest.raises(TrainingInterrupted) as stop:
        train(load_config("fcos_demo", args), callbacks=[SignalAt(2, signal.SIGTERM)], evaluate=False)
    assert stop.value.iteration == 3
    assert [row["iter"] for row in read_metrics(run / "metrics.jsonl") if "val/AP" in row] == [3]
    assert (run / "model_best.pth").is_file()
    train(load_config("fcos_demo", args), resume=True, evaluate=False)
    assert [row["iter"] for row in read_metrics(run / "metrics.jsonl") if "val/AP" in row] == [3, 6]


def test_lightning_slurm_requeue_still_works(tmp_path, tiny_overrides, uninterrupted, monkeypatch):
    """Under SLURM, SIGUSR1 (Lightning's requeue signal) still saves Lightning's hpc checkpoint and
    calls ``scontrol requeue``; the SIGTERM that then ends the job stops with msadkit's checkpoint,
    and the requeued job resumes exactly."""
    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train",
                       "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "run"
    args = overrides(tiny_overrides, run, NO_PERIODIC)
    with pytest.raises(TrainingInterrupted) as stop:
        train(
            load_config("fcos_demo", args),
            callbacks=[SignalAt(2, signal.SIGUSR1), SignalAt(3, signal.SIGTERM)],
            evaluate=False,
        )
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    assert stop.value.iteration == 4 and final_state(run)[0] == 4
    train(load_config("fcos_demo", args), resume=True, evaluate=False)
    assert_same_weights(uninterrupted, run)
