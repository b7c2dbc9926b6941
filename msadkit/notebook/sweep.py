"""A grid of notebook runs: every combination of parameter values in its own run folder.

The runs go through the job runner (:mod:`msadkit.jobs`): each is a ``msadkit notebook run``
subprocess with its output in ``<run folder>/notebook.log``, and its folder gets a ``job.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from msadkit.errors import ConfigError, MsadkitError
from msadkit.jobs import Backend, JobEvent, JobOutcome, ProgressCallback, log_progress, notebook_job, run_jobs
from msadkit.notebook.results import RESULTS_NAME, read_json_object
from msadkit.notebook.runner import (
    NotebookRun,
    check_parameter_names,
    json_normalised,
    read_run_record,
    resolve_notebook,
)
from msadkit.utils.run_folder import write_json_atomic

__all__ = ["SweepError", "expand_grid", "sweep_run_name", "run_sweep"]

SWEEP_SUMMARY_NAME = "sweep.json"
# The arguments of run_notebook that `msadkit notebook run` takes on its command line.
_COMMAND_LINE_OPTIONS = ("kernel_name", "execution_timeout")


class SweepError(MsadkitError):
    """Some runs of a sweep failed; ``runs`` holds every run, finished or not."""

    def __init__(self, message: str, runs: list["NotebookRun"]) -> None:
        super().__init__(message)
        self.runs = runs


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last key varying fastest.

    Raises:
        ConfigError: a key has no values.
    """
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"sweep grid key {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = Path(text).name if isinstance(value, str) and "/" in text else text
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def sweep_run_name(combination: Mapping[str, Any]) -> str:
    """Folder name of one grid point: ``key-value`` pairs joined by ``__`` (file-name safe)."""
    return "__".join(f"{_slug(key)}-{_slug(value)}" for key, value in combination.items()) or "run"


def run_sweep(
    notebook: str | os.PathLike,
    out_dir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    parameters: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    max_parallel: int = 1,
    backend: Backend | None = None,
    progress: ProgressCallback | None = log_progress,
    log_output: bool = True,
    **run_kwargs: Any,
) -> list[NotebookRun]:
    """Execute a notebook once per grid point, each into ``out_dir/<sweep_run_name>``.

    A failing run does not stop the others, and finished runs are kept: run again, the sweep reuses
    a finished run whose notebook and parameters are the ones asked for and executes the rest.
    ``out_dir/sweep.json`` lists every run with its status, updated as runs end.

    Args:
        notebook: a notebook name or path.
        out_dir: parent folder of the run folders.
        grid: parameter name -> values; the cartesian product is run.
        parameters: values shared by every run (a grid value wins over them).
        force: execute finished runs again.
        max_parallel: runs executed at the same time (each in its own process and kernel).
        backend: where the runs execute (:mod:`msadkit.jobs.backends`); None: local processes.
        progress: called with each :class:`msadkit.jobs.JobEvent` (``[k/n] started ...``).
        log_output: kept for callers of the in-process sweep; each run's cell output now goes to
            its ``notebook.log``.
        run_kwargs: ``kernel_name`` and ``execution_timeout`` of :func:`run_notebook`.

    Returns:
        Every run, in grid order; ``skipped`` marks a reused finished run.

    Raises:
        ConfigError: a parameter or grid key the notebook does not declare, or an unknown keyword
            (nothing runs).
        JobConfigMismatchError: a run folder holds a finished run with other parameters (a
            ``ConfigError``; nothing runs).
        SweepError: one or more runs failed; the message names each failing run folder and its
            error, and the finished runs stay in place.
    """
    del log_output  # the subprocess always writes its cells' output to the run's log
    unknown = sorted(set(run_kwargs) - set(_COMMAND_LINE_OPTIONS))
    if unknown:
        raise ConfigError(f"run_sweep takes no {', '.join(unknown)} (the runs take {', '.join(_COMMAND_LINE_OPTIONS)})")
    out_dir = Path(out_dir).expanduser().resolve()
    combinations = expand_grid(grid)
    names = [sweep_run_name(c) for c in combinations]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep grid values give clashing run folder names: {names}")
    source = resolve_notebook(notebook)
    check_parameter_names(source, {**(parameters or {}), **grid})
    jobs = [
        notebook_job(name, source, out_dir / name, {**(parameters or {}), **combination}, force=force, **run_kwargs)
        for combination, name in zip(combinations, names)
    ]
    done: dict[str, NotebookRun] = {}

    def record(event: JobEvent) -> None:
        if event.outcome is not None:
            done[event.job.name] = _notebook_run(source, event.outcome)
            write_json_atomic(out_dir / SWEEP_SUMMARY_NAME, _sweep_summary(source, grid, done, names))
        if progress is not None:
            progress(event)

    outcomes = run_jobs(jobs, max_parallel=max_parallel, backend=backend, progress=record)
    runs = [_notebook_run(source, outcome) for outcome in outcomes]
    write_json_atomic(out_dir / SWEEP_SUMMARY_NAME, _sweep_summary(source, grid, dict(zip(names, runs)), names))
    failed = [run for run in runs if run.status != "finished"]
    if failed:
        lines = "\n".join(f"  {run.run_dir}: {run.error}" for run in failed)
        raise SweepError(
            f"{len(failed)} of {len(runs)} runs of {source.stem} failed (the {len(runs) - len(failed)} "
            f"finished ones are kept in {out_dir}; running the sweep again executes only the failed ones):\n{lines}",
            runs,
        )
    return runs


def _notebook_run(source: Path, outcome: JobOutcome) -> NotebookRun:
    """The runner's view of one job: the notebook's own error line when it recorded one."""
    job = outcome.job
    parameters = job.config["parameters"]
    if outcome.ok:
        results = read_json_object(job.run_dir / RESULTS_NAME) or {}
        return NotebookRun(source, job.run_dir, parameters, "finished", skipped=outcome.status == "reused",
                           duration_s=outcome.wall_s, results=results)
    record = read_run_record(job.run_dir) or {}
    error = record.get("error") if record.get("status") == "failed" else None
    error = error or f"{outcome.error} (log {job.log_path})"
    return NotebookRun(source, job.run_dir, parameters, "failed", error=error, duration_s=outcome.wall_s)


def _sweep_summary(
    source: Path, grid: Mapping[str, Sequence[Any]], done: Mapping[str, NotebookRun], names: list[str]
) -> dict:
    return {
        "notebook": source.stem,
        "grid": json_normalised(grid),
        "runs": [
            {
                "run_dir": name,
                "status": done[name].status if name in done else "pending",
                "skipped": done[name].skipped if name in done else False,
                "error": done[name].error if name in done else None,
            }
            for name in names
        ],
    }
