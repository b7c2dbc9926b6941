"""Running Python in a child process from a test: the DDP runs (a Jupyter kernel or pytest cannot
host the ranks) and the command line as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

# Overrides that train on two CPU processes (gloo): DDP as on a multi-GPU machine, without one.
TWO_CPU_PROCESSES = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def run_python(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd``; the test fails with the end of its stderr unless it exits with 0.

    The child imports the package of this checkout, whatever the interpreter has installed, and
    runs torch on one thread: two ranks with a thread pool each would thrash a small machine.
    """
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_script(source: str, folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The Python ``source`` written to ``folder`` and run there with ``args`` (see :func:`run_python`)."""
    script = folder / "child_script.py"
    script.write_text(source)
    return run_python(str(script), *args, cwd=folder, timeout=timeout)
