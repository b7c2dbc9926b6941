"""Run a plan of jobs: at most N at a time, each after the jobs it needs, each recorded in its folder.

    plan = [
        training_job("teacher", "msad/msad_teacher_demo", "runs/teacher"),
        training_job("student", "msad/msad_student_demo", "runs/student",
                     ["distill.teacher=runs/teacher"], needs=["teacher"]),
    ]
    outcomes = run_jobs(plan, max_parallel=2, threads=1)

Before anything starts, every run folder is checked with the reuse rule (:mod:`msadkit.jobs.record`):
finished runs with the requested config are reused, a finished run with another config stops the
plan with one error. Then jobs start in plan order as soon as a slot is free and the jobs they need
have finished; a job whose dependency failed (or was skipped) is skipped. A failed job does not
stop the others. Each launched job's ``job.json`` holds its command, config, status, start and end
times, exit code and log file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from msadkit.errors import ConfigError
from msadkit.jobs.backends import Backend, LocalProcessBackend, RunningCommand
from msadkit.jobs.record import ReuseDecision, decide_reuse, now_iso, write_job_record
from msadkit.jobs.spec import Job

__all__ = ["JobOutcome", "JobEvent", "ProgressCallback", "log_progress", "run_jobs"]

logger = logging.getLogger("msadkit.jobs")

FINISHED, REUSED, FAILED, SKIPPED = "finished", "reused", "failed", "skipped"


@dataclass
class JobOutcome:
    """How one job of a plan ended.

    Attributes:
        job: the job.
        status: ``"finished"`` (ran and succeeded), ``"reused"`` (a finished run with the same
            config was already there), ``"failed"`` or ``"skipped"`` (a job it needs did not finish).
        return_code: the command's exit code (None when it did not run; -1 when the backend lost it).
        wall_s: seconds from start to end (0 when it did not run).
        error: one line on what went wrong, or None.
    """

    job: Job
    status: str
    return_code: int | None = None
    wall_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run folder now holds a finished run."""
        return self.status in (FINISHED, REUSED)

    @property
    def log_path(self) -> Path:
        return self.job.log_path


@dataclass(frozen=True)
class JobEvent:
    """A step of a plan, for progress reports.

    Attributes:
        kind: ``"started"``, ``"finished"``, ``"failed"``, ``"reused"`` or ``"skipped"``.
        job: the job.
        position: the job's 1-based place in the plan.
        total: the number of jobs in the plan.
        outcome: the outcome, for every kind but ``"started"``.
    """

    kind: str
    job: Job
    position: int
    total: int
    outcome: JobOutcome | None = None

    @property
    def line(self) -> str:
        """One line for a log: ``[3/8] finished teacher seed 0 in 12.3 s``."""
        head = f"[{self.position}/{self.total}] {self.kind} {self.job.name}"
        outcome = self.outcome
        if self.kind == FINISHED:
            return f"{head} in {outcome.wall_s:.1f} s"
        if self.kind == FAILED:
            return f"{head} after {outcome.wall_s:.1f} s ({outcome.error}; log {self.job.log_path})"
        if self.kind == REUSED:
            return f"{head} (a finished run with the same config is in {self.job.run_dir})"
        if self.kind == SKIPPED:
            return f"{head} ({outcome.error})"
        return f"{head} in {self.job.run_dir}"


ProgressCallback = Callable[[JobEvent], None]


def log_progress(event: JobEvent) -> None:
    """The default progress report: one line per event on the ``msadkit.jobs`` logger."""
    logger.log(logging.ERROR if event.kind == FAILED else logging.INFO, event.line)


def _check_plan(jobs: Sequence[Job], max_parallel: int, threads: int | None) -> None:
    """Refuse a plan that could not run to its end: repeated names, unknown or circular needs."""
    if max_parallel < 1:
        raise ConfigError(f"max_parallel must be >= 1, got {max_parallel}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1 or None, got {threads}")
    names = [job.name for job in jobs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"job names must be unique in a plan; repeated: {', '.join(repeated)}")
    by_name = {job.name: job for job in jobs}
    for job in jobs:
        unknown = [need for need in job.needs if need not in by_name]
        if unknown:
            raise ConfigError(f"job {job.name!r} needs {', '.join(map(repr, unknown))}, which the plan does not hold")
    state: dict[str, str] = {}  # depth-first search: "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            loop = path[path.index(name):] + [name]
            raise ConfigError(f"jobs need each other in a loop: {' -> '.join(loop)}")
        state[name] = "open"
        for need in by_name[name].needs:
            visit(need, [*path, name])
        state[name] = "done"

    for name in names:
        visit(name, [])


def _launch(job: Job, backend: Backend, env: Mapping[str, str]) -> tuple[RunningCommand, dict, float]:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    command = job.launch_command()
    record = {
        "name": job.name,
        "kind": job.kind,
        "command": command,
        "config": job.config,
        "status": "running",
        "started": now_iso(),
        "ended": None,
        "wall_s": None,
        "return_code": None,
        "log": str(job.log_path),
        "error": None,
    }
    # Recorded before the command starts: an interrupted plan leaves "running", which is unfinished.
    write_job_record(job.run_dir, record)
    return backend.start(command, env=env, log_path=job.log_path), record, time.monotonic()


def _finish(job: Job, handle: RunningCommand, code: int, record: dict, start: float) -> JobOutcome:
    wall = time.monotonic() - start
    if handle.failure is not None:
        error = handle.failure
    elif code != 0:
        error = f"exit code {code}"
    elif not job.outputs_exist():
        missing = [str(path) for path in job.output_paths() if not path.is_file()]
        error = f"exit code 0 but no {', '.join(missing)}"
    else:
        error = None
    status = FAILED if error else FINISHED
    record.update(status=status, ended=now_iso(), wall_s=round(wall, 1), return_code=code, error=error)
    write_job_record(job.run_dir, record)
    return JobOutcome(job, status, code, wall, error)


def run_jobs(
    jobs: Sequence[Job],
    *,
    max_parallel: int = 1,
    threads: int | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = log_progress,
    poll_interval_s: float = 0.5,
) -> list[JobOutcome]:
    """Run every job that is not finished yet; return every job's outcome, in plan order.

    Args:
        jobs: the plan; a job starts after the jobs it ``needs`` and in plan order otherwise (put the
            longest and most needed first).
        max_parallel: at most this many jobs run at once.
        threads: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` of every job (torch's intra-op threads);
            None leaves the environment as it is.
        backend: where commands run; None: :class:`~msadkit.jobs.backends.LocalProcessBackend`.
        progress: called with every :class:`JobEvent`; None reports nothing.
        poll_interval_s: seconds between two looks at the running jobs.

    Returns:
        One :class:`JobOutcome` per job. Failures do not raise: check ``outcome.ok``.

    Raises:
        ConfigError: a repeated job name, a need the plan does not hold, needs in a loop, or a bad
            ``max_parallel``/``threads``; nothing runs.
        JobConfigMismatchError: a run folder holds a finished run made with another config than its
            job's (or a checkpoint to resume from one); nothing runs.
    """
    _check_plan(jobs, max_parallel, threads)
    decisions = {job.name: decide_reuse(job) for job in jobs}  # every refusal before anything runs
    backend = backend or LocalProcessBackend()
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    position = {job.name: index for index, job in enumerate(jobs, start=1)}

    def report(kind: str, job: Job, outcome: JobOutcome | None = None) -> None:
        if progress is not None:
            progress(JobEvent(kind, job, position[job.name], len(jobs), outcome))

    outcomes: dict[str, JobOutcome] = {}
    for job in jobs:
        if decisions[job.name] is ReuseDecision.REUSE:
            outcomes[job.name] = JobOutcome(job, REUSED)
            report(REUSED, job, outcomes[job.name])
    pending = [job for job in jobs if job.name not in outcomes]
    running: dict[str, tuple[Job, RunningCommand, dict, float]] = {}
    try:
        while pending or running:
            for name, (job, handle, record, start) in list(running.items()):
                code = handle.poll()
                if code is not None:
                    del running[name]
                    outcomes[name] = _finish(job, handle, code, record, start)
                    report(outcomes[name].status, job, outcomes[name])
            for job in list(pending):
                broken = [need for need in job.needs if need in outcomes and not outcomes[need].ok]
                if broken:
                    pending.remove(job)
                    verb = "failed" if outcomes[broken[0]].status == FAILED else "was skipped"
                    reason = f"needs {broken[0]!r}, which {verb}"
                    outcomes[job.name] = JobOutcome(job, SKIPPED, error=reason)
                    report(SKIPPED, job, outcomes[job.name])
            for job in list(pending):
                if len(running) >= max_parallel:
                    break
                if all(need in outcomes and outcomes[need].ok for need in job.needs):
                    pending.remove(job)
                    running[job.name] = (job, *_launch(job, backend, env))
                    report("started", job)
            if running:
                time.sleep(poll_interval_s)
    except BaseException:
        # Interrupted (Ctrl-C, an error in a progress callback): stop what runs, leave it resumable.
        for job, handle, record, start in running.values():
            handle.cancel()
            record.update(status="failed", ended=now_iso(), wall_s=round(time.monotonic() - start, 1),
                          error="interrupted: the runner stopped")
            write_job_record(job.run_dir, record)
        raise
    return [outcomes[job.name] for job in jobs]
