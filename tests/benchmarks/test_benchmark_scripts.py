"""The throughput benchmarks run end to end on a CPU, so that they cannot rot between GPU runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, cwd: Path) -> str:
    """``python -m benchmarks.<script>``, as from the repository root (which ``PYTHONPATH`` stands
    for), in ``cwd`` so that what it writes stays there."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *args], capture_output=True, text=True, timeout=600, cwd=cwd,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_gpu_throughput_tiny_cpu_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "table.json"
    stdout = _run("gpu_throughput", "--device", "cpu", "--tiny", "--out", str(out), cwd=tmp_path)
    table = json.loads(out.read_text())
    train = [r for r in table["rows"] if "img_per_s" in r]
    assert {(r["model"], r["mode"]) for r in train} == {
        (model, mode) for model in ("msad_teacher", "msad_student") for mode in ("fp32", "bf16", "bf16_cl")
    }
    assert all(r["img_per_s"] > 0 and r["step_ms"] > 0 and r["peak_gib"] is None for r in train)
    low, = [r for r in table["rows"] if r["model"] == "msad_student_low_res"]
    high, = [r for r in table["rows"] if r["model"] == "fcos_high_res"]
    assert low["low_over_high"] == pytest.approx(low["latency_ms"] / high["latency_ms"])
    assert stdout.count("| msad_teacher |") == 3 and not table["skipped"]


def test_data_loader_quick_run_reports_rates_bytes_and_workers(tmp_path: Path) -> None:
    stdout = _run("data_loader", "--quick", cwd=tmp_path)
    rates = dict(re.findall(r"^\| (msadkit|msadkit_float32|torchvision) \| ([\d.]+) \|", stdout, re.M))
    assert set(rates) == {"msadkit", "msadkit_float32", "torchvision"}
    bytes_ratio = float(re.search(r"bytes per sample = ([\d.]+)", stdout).group(1))
    # uint8 against float32 pixels: a quarter, plus the few bytes of the targets.
    assert 0.25 <= bytes_ratio < 0.26
    workers = int(re.search(r"= (\d+) msadkit workers", stdout).group(1))
    assert workers >= 200 / float(rates["msadkit"])


@pytest.mark.slow  # torch.compile of the demo FCOS takes minutes on a small CPU
def test_compiled_step_quick_run(tmp_path: Path) -> None:
    stdout = _run("compiled_step", "--quick", cwd=tmp_path)
    assert re.search(r"RATIO compiled / eager step = [\d.]+", stdout)
