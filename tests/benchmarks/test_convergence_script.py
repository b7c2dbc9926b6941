"""benchmarks/convergence.py: the quick run trains from scratch and from a pretrained backbone."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import load_benchmark_script

ROOT = Path(__file__).resolve().parents[2]


def test_flattening_point_is_the_first_evaluation_the_rest_never_beats_by_more_than_the_gain():
    flattens_at = load_benchmark_script("convergence").flattens_at
    points = [(100, 2.0), (200, 10.0), (300, 14.0), (400, 14.5), (500, 14.8)]
    assert flattens_at(points, 1.0) == 300
    assert flattens_at(points, 0.1) is None  # the last step still gains 0.3
    assert flattens_at([(100, 5.0), (200, 3.0), (300, 3.5)], 1.0) == 100  # a dip that never recovers
    assert flattens_at([(100, 5.0)], 1.0) is None


def test_quick_run_prints_a_curve_per_start(tmp_path):
    out = tmp_path / "runs"
    # MSADKIT_CACHE: the test session's own cache; PYTHONPATH: the repository root, where `-m` runs it from.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.convergence", "--quick", "--out", str(out),
         "--lrs", "0.01", "--resolutions", "low", "--init", "scratch", "pretrained"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| run |"))
    assert header.split("|")[2:4] == [" 2 ", " 4 "]  # --quick: 4 iterations, evaluated every 2
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| low_")}
    assert set(rows) == {"low_scratch_lr0.01_s0", "low_pretrained_lr0.01_s0"}
    config = (out / "low_pretrained_lr0.01_s0" / "config.yaml").read_text()
    assert "pretrained" in config and ".pt" in config  # the backbone came from the pretrained file
