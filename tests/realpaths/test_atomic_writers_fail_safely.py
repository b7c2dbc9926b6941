"""An error inside any of the package's writers leaves the old file intact and no temporary file.

Errors are injected where a real failure happens: while the data are produced (an object torch
cannot pickle, a value JSON cannot encode after the first bytes), when the data are flushed to disk
(``os.fsync``: a full disk), and when the new file is moved into place (``os.replace``).
"""

import errno
import json
import os

import pytest
import torch

from msadkit.config import load_config
from msadkit.engine.train.atomic_checkpoint_io import AtomicCheckpointIO
from msadkit.engine.train.metrics_logger import MetricsJsonlLogger
from msadkit.engine.train.trainer import train
from msadkit.utils import atomic
from msadkit.utils.atomic import atomic_write, write_text_atomic
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic
from msadkit.utils.run_folder import write_json_atomic, write_run_config

OLD = b"old content that must survive\n"


def _write_bytes(path):
    with atomic_write(path) as handle:
        handle.write(b"new " * 1000)


def _write_text(path):
    write_text_atomic(path, "new\n" * 1000)


def _write_json(path):
    write_json_atomic(path, {"new": list(range(1000))})


def _write_config(path):
    write_run_config(path.parent, load_config("fcos_demo"))


def _save_checkpoint(path):
    save_atomic({"weights": torch.zeros(1000)}, path)


def _lightning_checkpoint_io(path):
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 3}, str(path))


WRITERS = {
    "atomic_write": ("file.bin", _write_bytes),
    "write_text_atomic": ("file.txt", _write_text),
    "write_json_atomic": ("eval.json", _write_json),
    "write_run_config": ("config.yaml", _write_config),
    "save_atomic": ("model_final.pth", _save_checkpoint),
    "AtomicCheckpointIO": ("last.ckpt", _lightning_checkpoint_io),
}


def _fail(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def _left_as_it_was(folder, name, before):
    assert (folder / name).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [name], "a temporary file was left behind"


@pytest.mark.parametrize("where", ["fsync", "replace"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failing_disk_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, writer, where):
    name, write = WRITERS[writer]
    (tmp_path / name).write_bytes(OLD)
    monkeypatch.setattr(atomic.os, where, _fail)
    with pytest.raises(OSError, match="injected"):
        write(tmp_path / name)
    monkeypatch.undo()
    _left_as_it_was(tmp_path, name, OLD)


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failing_disk_during_the_metrics_rewrite_keeps_the_metrics(tmp_path, monkeypatch, where):
    path = tmp_path / "metrics.jsonl"
    rows = "".join(json.dumps({"iter": i, "loss": 1.0}) + "\n" for i in (5, 10, 15))
    path.write_text(rows)
    monkeypatch.setattr(atomic.os, where, _fail)
    with pytest.raises(OSError, match="injected"):
        MetricsJsonlLogger(path, period=5).start(resume_step=10)
    monkeypatch.undo()
    _left_as_it_was(tmp_path, "metrics.jsonl", rows.encode())


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this (injected)")


def test_an_error_in_the_middle_of_a_checkpoint_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "model_final.pth"
    save_atomic({"weights": torch.ones(3)}, path)
    before = path.read_bytes()
    # torch.save has written the first tensor's record when it meets the object it cannot pickle.
    with pytest.raises(RuntimeError, match="injected"):
        save_atomic({"weights": torch.zeros(100_000), "later": _Unpicklable()}, path)
    _left_as_it_was(tmp_path, "model_final.pth", before)
    assert torch.equal(load_checkpoint_file(path)["weights"], torch.ones(3))


def test_an_error_in_the_middle_of_a_text_file_keeps_the_old_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="injected"):
        with atomic_write(path, "w", encoding="utf-8") as handle:
            handle.write("half of the new text\n" * 500)
            raise RuntimeError("writer failed half-way (injected)")
    _left_as_it_was(tmp_path, "notes.txt", OLD)


def test_a_checkpoint_write_failing_inside_lightning_keeps_the_previous_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    """Through the real trainer: the checkpoint of iteration 2 fails, the one of iteration 1 survives."""
    run = tmp_path / "run"
    real_fsync = os.fsync
    saved = []

    def fsync_failing_after_the_first_checkpoint(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".last.ckpt." in name:
            saved.append(name)
            if len(saved) > 1:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_fsync(fd)

    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name the file being synced")
    monkeypatch.setattr(atomic.os, "fsync", fsync_failing_after_the_first_checkpoint)
    config = load_config("fcos_demo", tiny_overrides(run, max_iter=3))
    with pytest.raises(OSError, match="injected"):
        train(config, evaluate=False)
    monkeypatch.undo()
    checkpoints = run / "checkpoints"
    assert load_checkpoint_file(checkpoints / "last.ckpt")["global_step"] == 1
    assert not [p.name for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    assert not (run / "model_final.pth").exists()
