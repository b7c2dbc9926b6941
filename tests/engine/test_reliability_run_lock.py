"""The run folder: an unwritable output_dir is one line up front; one training process per folder."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.engine.train import trainer as trainer_module
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError
from msadkit.utils.run_lock import LOCK_NAME, RunLock


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fails the test if training gets as far as building a dataset or a model."""

    def fail(*args, **kwargs):
        raise AssertionError("the dataset or model was built before the run folder was checked")

    monkeypatch.setattr(trainer_module, "build_dataset", fail)
    monkeypatch.setattr(trainer_module, "build_training_model", fail)


# ------------------------------------------------------------------------------------ F: paths
def test_output_dir_under_a_file_is_refused_before_anything_is_built(tmp_path, tiny_overrides, nothing_is_built):
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file, not a folder")
    run = blocker / "run"
    with pytest.raises(ConfigError, match="cannot be created") as info:
        train(load_config("fcos_demo", tiny_overrides(run)))
    assert str(run) in str(info.value) and str(blocker) in str(info.value)
    assert blocker.read_text() == "a file, not a folder"


def test_output_dir_that_is_a_file_is_one_line_from_the_cli(tmp_path, tiny_overrides, nothing_is_built, capsys):
    run = tmp_path / "run"
    run.write_text("")
    assert main(["train", "fcos_demo", *tiny_overrides(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [f"msadkit train: error: output_dir {run} is a file, not a folder"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_dir_in_a_read_only_folder_is_refused(tmp_path, tiny_overrides, nothing_is_built):
    parent = tmp_path / "read-only"
    parent.mkdir(mode=0o555)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            train(load_config("fcos_demo", tiny_overrides(parent / "run")))
    finally:
        parent.chmod(0o755)


# ------------------------------------------------------------------------------------ G: lock
HOLDER = textwrap.dedent(
    """
    import sys, time
    from msadkit.utils.run_lock import RunLock

    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _start_holder(run):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_a_second_process_is_refused_and_a_killed_holder_does_not_block(
    tmp_path, tiny_overrides, monkeypatch, capsys
):
    run = tmp_path / "run"
    holder = _start_holder(run)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(trainer_module, "build_dataset", lambda *a, **k: pytest.fail("built a dataset"))
            started = time.monotonic()
            assert main(["train", "fcos_demo", *tiny_overrides(run, max_iter=1)]) == 2
            assert time.monotonic() - started < 10
        err = capsys.readouterr().err
        # Lightning's device lines come first; the refusal is one line.
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("msadkit train: error: ")
        assert f"output_dir {run} is in use" in errors[0] and f"pid {holder.pid}" in errors[0]
        assert (run / LOCK_NAME).is_file()  # the holder's lock is left alone
    finally:
        _kill(holder)
    assert holder.returncode == -signal.SIGKILL
    assert (run / LOCK_NAME).is_file()  # a killed process leaves its lock file ...
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=1)), evaluate=False)  # ... which blocks nothing
    assert (run / "model_final.pth").is_file()
    assert not (run / LOCK_NAME).exists()  # released at the end


def test_a_run_holds_the_lock_while_it_trains(tmp_path, tiny_overrides):
    import lightning as L

    run = tmp_path / "run"
    seen = []

    class TryTheLock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            with pytest.raises(ConfigError, match=f"pid {os.getpid()} on host") as info:
                RunLock(run).acquire()
            seen.append(str(info.value))

    train(load_config("fcos_demo", tiny_overrides(run, max_iter=1)), callbacks=[TryTheLock()], evaluate=False)
    assert len(seen) == 1 and str(run) in seen[0]


def test_lock_cycle_in_one_folder_and_refused_start_leaves_no_folder(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    with RunLock(run):
        assert (run / LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(ConfigError, match="in use"):
            RunLock(run).acquire()
    # Released with nothing written: the folders the lock created are gone again.
    assert not (tmp_path / "a").exists()
    with RunLock(run):
        (run / "config.yaml").write_text("")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
