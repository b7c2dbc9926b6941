"""`make lab` starts JupyterLab as root too (Jupyter refuses root without --allow-root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None or not hasattr(os, "geteuid"), reason="needs make on a POSIX system")
def test_lab_passes_allow_root_exactly_when_run_as_root():
    # -n prints the commands; -o keeps the install step (and its prerequisites) out of it.
    done = subprocess.run(["make", "-n", "-o", "install", "-o", ".venv/bin/.msadkit-installed", "lab"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    (command,) = [line for line in done.stdout.splitlines() if "jupyter lab" in line]
    assert "--notebook-dir=notebooks" in command
    assert ("--allow-root" in command) == (os.geteuid() == 0)
