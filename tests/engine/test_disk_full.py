"""A full disk while a run writes a checkpoint, a result or a metrics row: one line naming the file
and the free space, exit status 2, and no file left half-written.

The in-process tests give one file's writer a disk that fills up (the others write as usual); the
tmpfs tests fill a real, small filesystem and need root to mount it.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msadkit.cli import main
from msadkit.engine.train.metrics_logger import append_record
from msadkit.errors import MsadkitError
from tests.conftest import tiny_training_overrides


class FillsUp:
    """A file that takes ``room`` more characters, then fails as a full disk does (part of the
    write lands first)."""

    def __init__(self, handle, room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, data):
        if len(data) > self._room:
            self._handle.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


@pytest.fixture
def disk_full_for(monkeypatch):
    """``disk_full_for("eval.json")``: the temporary file of any write to a file of that name prefix fills up."""
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc to name the file being opened")
    real_fdopen = os.fdopen

    def arm(prefix: str, room: int = 10) -> None:
        def fdopen(fd, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            # The temporary files of atomic writes are named .<name>.<random>.tmp.
            return FillsUp(handle, room) if name.startswith(f".{prefix}") and name.endswith(".tmp") else handle

        monkeypatch.setattr(os, "fdopen", fdopen)

    return arm


def leftovers(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.parametrize(
    "prefix, written",
    [
        ("iter_step=", "checkpoints/iter_step=0000001.ckpt"),
        ("model_final.pth", "model_final.pth"),
        ("eval.json", "eval.json"),
        ("summary.json", "summary.json"),
    ],
)
def test_a_file_that_does_not_fit_is_one_line_and_exit_2(tmp_path, disk_full_for, capsys, prefix, written):
    run = tmp_path / "run"
    disk_full_for(prefix, room=10)
    status = main(["train", "fcos_demo", *tiny_training_overrides(run, max_iter=2)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("msadkit train:")]
    assert status == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith(f"msadkit train: error: cannot write {run / written}: No space left on device (")
    assert " free)" in errors[0]
    assert not (run / written).exists()
    assert leftovers(run) == []
    # The rows written before are whole.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("iter" in row for row in rows)


def test_the_error_is_an_msadkit_error_and_an_os_error(tmp_path, disk_full_for):
    import torch

    from msadkit.utils.checkpoint import save_atomic

    disk_full_for("weights.pth", room=100)
    with pytest.raises(MsadkitError) as error:
        save_atomic({"w": torch.zeros(10_000)}, tmp_path / "weights.pth")
    assert isinstance(error.value, OSError) and error.value.errno == errno.ENOSPC
    assert str(tmp_path / "weights.pth") in str(error.value)
    assert list(tmp_path.iterdir()) == []


# A real full filesystem -------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A folder on a tmpfs of ``size`` bytes: ``small_tmpfs(size)`` returns its path."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_training_onto_a_full_tmpfs_is_one_line_and_exit_2(small_tmpfs, tmp_path):
    # Room for config.yaml, metrics and logs; none for a checkpoint of the tiny model (~14 MB).
    run = small_tmpfs(4 * 1024 * 1024) / "run"
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "msadkit.cli", "train", "fcos_demo", *tiny_training_overrides(run, max_iter=2)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("msadkit train:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"cannot write {run / 'checkpoints'}/iter_step=0000001.ckpt: No space left on device (" in errors[0]
    assert "free)" in errors[0]
    assert not list((run / "checkpoints").iterdir())
    assert leftovers(run) == []


def test_a_metrics_row_that_does_not_fit_leaves_whole_rows(small_tmpfs):
    folder = small_tmpfs(64 * 1024)
    path = folder / "metrics.jsonl"
    first = {"iter": 1, "loss": 1.0}
    append_record(path, first)
    # Fill the filesystem: only the rest of the file's last page is left for the next row.
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    long_row = {"iter": 2, "loss": 2.0, "note": "x" * 8192}
    with pytest.raises(MsadkitError, match=r"cannot write .*metrics.jsonl: No space left on device \(.* free\)"):
        append_record(path, long_row)
    assert path.read_text() == json.dumps(first) + "\n"
