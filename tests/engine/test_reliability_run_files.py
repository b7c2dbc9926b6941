"""The files of a run folder: their modes, metrics after a restart, and what a killed writer leaves."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from contextlib import contextmanager

import pytest
import torch

from msadkit.config import load_config
from msadkit.engine.train.atomic_checkpoint_io import AtomicCheckpointIO
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError
from msadkit.utils import atomic
from msadkit.utils.atomic import atomic_write, write_text_atomic
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic


@contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------ C: modes
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, expected):
    with umask(mask):
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
        save_atomic({"x": torch.zeros(1)}, tmp_path / "model_final.pth")
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, str(tmp_path / "last.ckpt"))
        with atomic_write(tmp_path / "eval.json", "w") as handle:
            handle.write("{}")
    for name in ("config.yaml", "model_final.pth", "last.ckpt", "eval.json"):
        assert mode(tmp_path / name) == expected, name


def test_a_run_folder_has_one_file_mode_under_umask_022(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    with umask(0o022):
        train(load_config("fcos_demo", tiny_overrides(run, max_iter=1)))
    names = ["config.yaml", "metrics.jsonl", "model_final.pth", "eval.json", "summary.json", "checkpoints/last.ckpt"]
    assert {name: oct(mode(run / name)) for name in names} == {name: oct(0o644) for name in names}


# ------------------------------------------------------------------------------------ D: metrics
def test_resume_drops_the_metrics_written_after_the_checkpoint(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=2)), evaluate=False)
    # A process killed at iteration 4 logged 3 and 4 (and half a line) after the checkpoint of 2.
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"iter": 3, "loss": 1.0}) + "\n" + json.dumps({"iter": 4, "loss": 1.0}) + "\n")
        handle.write('{"iter": 5, "lo')
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=4)), resume=True, evaluate=False)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2, 3, 4]
    assert all(r["loss"] != 1.0 for r in records[2:])  # the resumed run's own records


def test_a_fresh_start_after_a_run_killed_before_its_first_checkpoint_starts_empty_metrics(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("output_dir: old\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iter": i, "loss": 9.0}) + "\n" for i in (1, 2)))
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=2)), evaluate=False)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2]
    assert all(r["loss"] != 9.0 for r in records)


# ------------------------------------------------------------------------------------ E: kills
KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from msadkit.utils.atomic import atomic_write

    with atomic_write(sys.argv[1], "wb") as handle:
        handle.write(b"half a checkpoint")
        handle.flush()
        print("writing", flush=True)
        time.sleep(120)
    """
)


def test_a_writer_killed_mid_write_leaves_a_temporary_that_cleanup_removes(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "iter_step=0000002.ckpt").write_bytes(b"complete")
    (folder / ".hidden.tmp").write_text("not ours: no random part")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder / "last.ckpt")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in folder.iterdir())
    assert not (folder / "last.ckpt").exists()
    temporaries = [name for name in leftovers if name.startswith(".last.ckpt.") and name.endswith(".tmp")]
    assert len(temporaries) == 1

    removed = atomic.remove_stale_temporaries(folder)
    assert [p.name for p in removed] == temporaries
    assert sorted(p.name for p in folder.iterdir()) == [".hidden.tmp", "iter_step=0000002.ckpt"]
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


def test_resume_after_a_kill_during_the_first_last_ckpt_write(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    train(load_config("fcos_demo", tiny_overrides(run, max_iter=2)), evaluate=False)
    (run / "model_final.pth").unlink()
    # What a kill during the first write of last.ckpt leaves: the iteration checkpoint, an empty
    # temporary of last.ckpt, and (never written by msadkit, but possible) an unreadable later file.
    (checkpoints / "last.ckpt").unlink()
    assert (checkpoints / "iter_step=0000002.ckpt").is_file()
    (checkpoints / ".last.ckpt.k1ll3d_x.tmp").write_bytes(b"")
    (checkpoints / ".iter_step=0000003.ckpt.abcdefgh.tmp").write_bytes(b"PK\x03\x04 truncated")
    (checkpoints / "iter_step=0000009.ckpt").write_bytes(b"not a checkpoint")

    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config("fcos_demo", tiny_overrides(run, max_iter=3)), evaluate=False)
    assert not list(checkpoints.glob(".*.tmp"))  # removed at start, even when the start is refused

    train(load_config("fcos_demo", tiny_overrides(run, max_iter=3)), resume=True, evaluate=False)
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert load_checkpoint_file(checkpoints / "last.ckpt")["global_step"] == 3
    assert not list(checkpoints.glob(".*.tmp"))
