"""A tiny job for the runner's tests: a Python process that sleeps, records when it ran, and exits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from msadkit.jobs import command_job

RECORDING_SCRIPT = """
import json, os, sys, time
out, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
start = time.time()
print("working", flush=True)
time.sleep(seconds)
with open(out, "w") as handle:
    json.dump({"start": start, "end": time.time(), "omp": os.environ.get("OMP_NUM_THREADS"),
               "mkl": os.environ.get("MKL_NUM_THREADS")}, handle)
sys.exit(code)
"""


@pytest.fixture
def sleeper(tmp_path):
    """``sleeper(name, seconds=0.0, code=0, needs=(), config=None)``: a command job in ``tmp_path/name``
    whose output ``ran.json`` holds its start and end times and the thread variables it saw."""
    script = tmp_path / "record_run.py"
    script.write_text(RECORDING_SCRIPT)

    def make(name: str, seconds: float = 0.0, code: int = 0, needs=(), config=None):
        folder = tmp_path / name
        command = [sys.executable, str(script), str(folder / "ran.json"), str(seconds), str(code)]
        return command_job(name, command, folder, outputs=["ran.json"], needs=needs, config=config)

    return make


def ran(job) -> dict:
    """What a sleeper job recorded."""
    return json.loads((Path(job.run_dir) / "ran.json").read_text())
