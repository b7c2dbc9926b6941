"""msadkit.jobs.run_jobs with real subprocesses: slots, dependencies, records, reuse, progress."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from msadkit.errors import ConfigError
from msadkit.jobs import JobConfigMismatchError, read_job_record, run_jobs
from tests.jobs.conftest import ran

QUICK = 0.05  # seconds between two looks at the running jobs


def test_never_more_jobs_overlap_than_max_parallel_and_each_gets_its_threads(sleeper):
    plan = [sleeper(f"job{k}", seconds=0.6) for k in range(5)]
    outcomes = run_jobs(plan, max_parallel=2, threads=3, progress=None, poll_interval_s=QUICK)
    assert [o.status for o in outcomes] == ["finished"] * 5
    spans = [(ran(job)["start"], ran(job)["end"]) for job in plan]
    overlaps = [sum(start < end_b and start_b < end for start_b, end_b in spans) for start, end in spans]
    assert max(overlaps) == 2  # two ran together (the limit was used), never three
    assert all(ran(job)["omp"] == "3" and ran(job)["mkl"] == "3" for job in plan)


def test_a_job_starts_after_the_jobs_it_needs_and_is_skipped_when_one_failed(sleeper):
    plan = [
        sleeper("teacher", seconds=0.4),
        sleeper("student", needs=["teacher"]),
        sleeper("broken", code=3),
        sleeper("orphan", needs=["broken"]),
        sleeper("grand_orphan", needs=["orphan", "teacher"]),
    ]
    outcomes = {o.job.name: o for o in run_jobs(plan, max_parallel=3, progress=None, poll_interval_s=QUICK)}
    assert ran(plan[1])["start"] >= ran(plan[0])["end"]  # though a slot was free from the start
    assert {name: o.status for name, o in outcomes.items()} == {
        "teacher": "finished", "student": "finished", "broken": "failed",
        "orphan": "skipped", "grand_orphan": "skipped",
    }
    assert outcomes["broken"].return_code == 3 and outcomes["broken"].error == "exit code 3"
    assert outcomes["orphan"].error == "needs 'broken', which failed"
    assert outcomes["grand_orphan"].error == "needs 'orphan', which was skipped"
    assert not plan[3].run_dir.exists()  # a skipped job leaves nothing behind


def test_job_json_records_the_command_config_status_times_code_and_log(sleeper):
    job = sleeper("one", code=1, config={"what": "a failing run"})
    outcome, = run_jobs([job], progress=None, poll_interval_s=QUICK)
    record = read_job_record(job.run_dir)
    assert record["name"] == "one" and record["kind"] == "command"
    assert record["command"] == list(job.command) and record["config"] == {"what": "a failing run"}
    assert record["status"] == "failed" and record["return_code"] == 1 and record["error"] == "exit code 1"
    assert record["started"] <= record["ended"] and record["wall_s"] == pytest.approx(outcome.wall_s, abs=0.1)
    assert record["log"] == str(job.run_dir / "job.log")
    log = (job.run_dir / "job.log").read_text()
    assert log.startswith("$ ") and str(job.run_dir / "ran.json") in log.splitlines()[0] and "working" in log


def test_a_failed_job_runs_again_and_a_finished_one_is_reused(sleeper):
    failing = sleeper("flaky", code=2)
    assert run_jobs([failing], progress=None, poll_interval_s=QUICK)[0].status == "failed"
    # Same folder and config, now succeeding: a failed run is run again, not reused.
    fixed = dataclasses.replace(failing, command=failing.command[:-1] + ("0",))
    assert run_jobs([fixed], progress=None, poll_interval_s=QUICK)[0].status == "finished"
    assert read_job_record(fixed.run_dir)["status"] == "finished"
    again, = run_jobs([fixed], progress=None, poll_interval_s=QUICK)
    assert again.status == "reused" and again.ok and again.return_code is None
    assert (fixed.run_dir / "job.log").read_text().count("$ ") == 2  # the reuse started nothing


def test_a_finished_run_with_another_config_is_refused_before_anything_runs(sleeper):
    first = sleeper("run", config={"solver": {"base_lr": 0.03, "steps": [8, 9]}, "seed": 1})
    run_jobs([first], progress=None, poll_interval_s=QUICK)
    other = sleeper("run", config={"solver": {"base_lr": 0.01, "steps": [8, 10]}, "seed": 1})
    bystander = sleeper("bystander")
    with pytest.raises(JobConfigMismatchError) as refused:
        run_jobs([bystander, other], progress=None, poll_interval_s=QUICK)
    message = str(refused.value)
    assert str(other.run_dir) in message and "solver.base_lr is 0.03 there, 0.01 requested" in message
    assert "solver.steps[1] is 9 there, 10 requested" in message
    assert refused.value.keys == ["solver.base_lr", "solver.steps[1]"]
    assert isinstance(refused.value, ConfigError)
    assert not bystander.run_dir.exists()
    assert read_job_record(first.run_dir)["config"]["solver"]["base_lr"] == 0.03  # not overwritten


def test_progress_reports_one_line_per_event(sleeper, caplog):
    plan = [sleeper("good", seconds=0.1), sleeper("bad", code=4), sleeper("after_bad", needs=["bad"])]
    lines = []
    run_jobs(plan, progress=lambda event: lines.append(event.line), poll_interval_s=QUICK)
    assert lines[0] == f"[1/3] started good in {plan[0].run_dir}"
    assert any(line.startswith("[1/3] finished good in ") and line.endswith(" s") for line in lines)
    failed, = [line for line in lines if line.startswith("[2/3] failed bad after ")]
    assert failed.endswith(f"(exit code 4; log {plan[1].run_dir / 'job.log'})")
    assert "[3/3] skipped after_bad (needs 'bad', which failed)" in lines
    with caplog.at_level(logging.INFO, logger="msadkit.jobs"):
        run_jobs(plan[:1], poll_interval_s=QUICK)  # the default report: the msadkit.jobs logger
    assert caplog.messages == [f"[1/1] reused good (a finished run with the same config is in {plan[0].run_dir})"]


def test_an_interrupted_plan_stops_its_jobs_and_leaves_them_to_run_again(sleeper):
    job = sleeper("long", seconds=30)

    def interrupt(event):
        if event.kind == "started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs([job], progress=interrupt, poll_interval_s=QUICK)
    record = read_job_record(job.run_dir)
    assert record["status"] == "failed" and record["error"] == "interrupted: the runner stopped"
    assert not (job.run_dir / "ran.json").exists()


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ([("a", ()), ("a", ())], "repeated: a"),
        ([("a", ("ghost",))], "needs 'ghost', which the plan does not hold"),
        ([("a", ("b",)), ("b", ("c",)), ("c", ("a",))], "in a loop: a -> b -> c -> a"),
    ],
)
def test_a_plan_that_cannot_run_to_its_end_is_refused(sleeper, plan, message):
    jobs = [sleeper(name, needs=needs) for name, needs in plan]
    with pytest.raises(ConfigError, match=message):
        run_jobs(jobs, progress=None)
    assert not any(job.run_dir.exists() for job in jobs)
    with pytest.raises(ConfigError, match="max_parallel must be >= 1"):
        run_jobs(jobs[:1], max_parallel=0)


def test_config_is_recorded_as_json_sees_it(sleeper):
    job = sleeper("tuple", config={"sizes": (1, 2)})
    assert job.config == {"sizes": [1, 2]}
    with pytest.raises(ConfigError, match="JSON values"):
        sleeper("bad", config={"path": object()})
    assert json.loads(json.dumps(job.config)) == job.config
