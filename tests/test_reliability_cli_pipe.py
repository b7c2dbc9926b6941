"""`msadkit configs | head -1`: the command stops quietly when its reader goes away."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MSADKIT = [sys.executable, "-m", "msadkit.cli"]
SIGPIPE_STATUS = 141  # what a shell reports for a filter killed by SIGPIPE (128 + 13)


def _env(unbuffered: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.parametrize("unbuffered", [True, False])
@pytest.mark.parametrize("command", [["configs"], ["notebook", "list"]])
def test_writing_into_a_closed_pipe_exits_quietly(command, unbuffered):
    # The reader is gone before the first write, so every write fails: no race with the reader.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            MSADKIT + command, stdout=write_end, stderr=subprocess.PIPE, text=True, env=_env(unbuffered), timeout=120
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == SIGPIPE_STATUS


@pytest.mark.skipif(shutil.which("head") is None or shutil.which("bash") is None, reason="needs bash and head")
@pytest.mark.parametrize("command", ["configs", "notebook list"])
def test_piping_into_head_prints_one_line_and_no_traceback(command):
    cli = " ".join(MSADKIT)
    # head exits after one line while msadkit is still writing; pipefail shows msadkit's own status.
    script = f"set -o pipefail; {cli} {command} | head -1; echo status=$?"
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=_env(True), timeout=120, cwd=Path.cwd()
    )
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    first, status = result.stdout.splitlines()
    assert first and status in ("status=0", f"status={SIGPIPE_STATUS}")


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback(monkeypatch, capsys):
    from msadkit import cli
    from msadkit.commands import configs

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe (a socket)")

    monkeypatch.setattr(configs, "run", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["configs"])
