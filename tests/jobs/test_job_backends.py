"""The SLURM backend through submitit's LocalExecutor (the same code path without a cluster), and
the error that names the extra when submitit is missing."""

from __future__ import annotations

import sys

import pytest

from msadkit.jobs import MissingExtraError, SubmititBackend, read_job_record, run_jobs
from tests.jobs.conftest import ran


def test_submitit_backend_runs_the_plan_with_its_dependencies_and_threads(sleeper, tmp_path):
    pytest.importorskip("submitit", reason="submitit (extra msadkit[slurm]) is not installed")
    backend = SubmititBackend(tmp_path / "submitit", cluster="local", timeout_min=5)
    plan = [sleeper("teacher", seconds=0.2), sleeper("student", needs=["teacher"]), sleeper("broken", code=5)]
    outcomes = run_jobs(plan, max_parallel=2, threads=2, backend=backend, progress=None, poll_interval_s=0.1)
    assert [(o.status, o.return_code) for o in outcomes] == [("finished", 0), ("finished", 0), ("failed", 5)]
    assert ran(plan[1])["start"] >= ran(plan[0])["end"]
    assert ran(plan[0])["omp"] == "2" and ran(plan[0])["mkl"] == "2"
    assert read_job_record(plan[2].run_dir)["return_code"] == 5
    assert "working" in (plan[1].run_dir / "job.log").read_text()
    assert [o.status for o in run_jobs(plan[:2], backend=backend, progress=None)] == ["reused", "reused"]


def test_a_missing_submitit_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an environment without it gives import
    with pytest.raises(MissingExtraError, match=r"pip install msadkit\[slurm\]"):
        SubmititBackend(tmp_path / "submitit")
