"""Real ``msadkit train`` processes stopped by a signal from outside, then resumed with the command
they print: the resumed run ends with the uninterrupted run's weights bit for bit.

The signal goes to the whole process group, as Ctrl+C in a terminal and a cluster's SIGTERM do
(data-loader workers and DDP ranks receive it too), or to rank 0 alone, as ``kill PID`` does.
Each test runs three training processes, so they are marked slow.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.engine.test_reliability_exact_resume import assert_same_weights, final_state, overrides

# `msadkit train` with one addition: rank 0 waits before iteration PAUSE_AT + 1 until the test
# has sent its signal, so the run stops after iteration PAUSE_AT + 1 whatever the machine's speed.
CLI_WITH_PAUSE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import lightning as L

    from msadkit.cli import main
    from msadkit.engine.train import trainer as trainer_module

    pause_at = int(os.environ.get("PAUSE_AT", "-1"))
    marks = Path(os.environ.get("MARKS", "."))


    class PauseAt(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == pause_at and trainer.is_global_zero:
                (marks / "paused").write_text(str(os.getpid()))
                deadline = time.monotonic() + 120
                while not (marks / "signalled").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)


    real_train = trainer_module.train
    trainer_module.train = lambda config, **kw: real_train(config, callbacks=[PauseAt()], **kw)
    sys.exit(main(sys.argv[1:]))
    """
)

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.synthetic.num_train=16"]


def start(tmp_path: Path, argv: list[str], pause_at: int = -1) -> subprocess.Popen:
    script = tmp_path / "cli_with_pause.py"
    script.write_text(CLI_WITH_PAUSE)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1", PAUSE_AT=str(pause_at), MARKS=str(tmp_path))
    return subprocess.Popen(
        [sys.executable, str(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        # Its own process group: the group signal reaches its workers and ranks, not pytest.
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, err


def train_argv(run: Path, args: list[str]) -> list[str]:
    return ["train", "fcos_demo", *args, "--output-dir", str(run), "--no-eval"]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs, one per configuration, trained on first use."""
    from tests.conftest import tiny_training_overrides

    done: dict[tuple[str, ...], Path] = {}

    def reference(extra: tuple[str, ...]) -> Path:
        if extra not in done:
            folder = tmp_path_factory.mktemp("reference")
            run = folder / "run"
            status, err = finish(start(folder, train_argv(run, overrides(tiny_training_overrides, run, *extra))))
            assert status == 0, err[-3000:]
            done[extra] = run
        return done[extra]

    return reference


def stop_and_resume(tmp_path, tiny_overrides, reference: Path, extra, signum, whole_group) -> None:
    run = tmp_path / "run"
    argv = train_argv(run, overrides(tiny_overrides, run, "trainer.checkpoint_period=100", *extra))
    process = start(tmp_path, argv, pause_at=2)
    deadline = time.monotonic() + 300
    while not (tmp_path / "paused").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never reached iteration 2"
        time.sleep(0.1)
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    (tmp_path / "signalled").write_text("")
    status, err = finish(process)
    assert status == 128 + signum, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("msadkit train:")]
    assert len(lines) == 1, err[-3000:]
    assert f"{signal.Signals(signum).name} at iteration 3 of 6" in lines[0]
    assert "Traceback" not in err and "exited unexpectedly" not in err, err[-3000:]
    assert final_state(run)[0] == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_step=0000003.ckpt", "last.ckpt"]

    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:2] == ["msadkit", "train"] and command[-1] == "--resume"
    status, err = finish(start(tmp_path, command[1:]))
    assert status == 0, err[-3000:]
    assert_same_weights(reference, run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, signum",
    [(0, signal.SIGTERM), (2, signal.SIGTERM), (2, signal.SIGINT)],
    ids=["0-SIGTERM", "2-SIGTERM", "2-SIGINT"],
)
def test_a_signalled_process_group_resumes_exactly(tmp_path, tiny_overrides, references, workers, signum):
    extra = (f"data.num_workers={workers}",)
    stop_and_resume(tmp_path, tiny_overrides, references(extra), extra, signum, whole_group=True)


@pytest.mark.slow
def test_sigterm_to_rank_zero_of_a_ddp_run_stops_both_ranks_and_resumes_exactly(tmp_path, tiny_overrides, references):
    extra = tuple(DDP)
    stop_and_resume(tmp_path, tiny_overrides, references(extra), extra, signal.SIGTERM, whole_group=False)
