"""What the effectiveness sweeps share: their options, running their plan, their report.

``msad_effectiveness`` and ``adl_gid_effectiveness`` define their experiments (which runs, which
configs, which targets); training goes through :mod:`msadkit.jobs` (concurrency, dependencies,
``job.json`` records, one reuse rule), and this module turns the outcome into the sweep log, the
per-method wall times and the RESULTS.md section.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from benchmarks.common import (
    append_sweep_record,
    environment_lines,
    mean_std,
    replace_markdown_section,
    sweep_log_lines,
)
from msadkit.errors import MsadkitError
from msadkit.jobs import Job, JobEvent, run_jobs
from msadkit.utils.run_folder import CONFIG_NAME, EVAL_NAME, read_run_config

__all__ = [
    "add_sweep_arguments",
    "check_positive",
    "print_environment",
    "run_plan",
    "read_eval",
    "finite",
    "per_seed",
    "seeds_text",
    "TargetCheck",
    "trained_lengths",
    "resolve_pretrained",
    "results_body",
    "write_results",
    "report_failures",
]

# Seconds between two looks at the running jobs: runs take minutes, and the machine is shared.
POLL_INTERVAL_S = 2.0


def add_sweep_arguments(parser: argparse.ArgumentParser, *, out: str, seeds_help: str = "trainer.seed values") -> None:
    """``--out``, ``--seeds``, ``--lr``, ``--jobs``, ``--threads``, ``--results``, ``--table-only`` and the
    config overrides for every run."""
    parser.add_argument("--out", type=Path, default=Path(out), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=seeds_help)
    parser.add_argument("--lr", type=float, default=0.03, help="solver.base_lr of every run")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--results", type=Path, help="Markdown file to write the table into (with --table-only too)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """Exit with the usage error when one of the integer options ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def print_environment() -> list[str]:
    """Print and return the machine, date, versions and command (:func:`environment_lines`)."""
    header = environment_lines()
    for line in header:
        print(line, flush=True)
    return header


def _print_event(event: JobEvent) -> None:
    print(f"   {event.line}", flush=True)


def run_plan(
    plan: Sequence[Job], args: argparse.Namespace, *, log_folder: Path, header: list[str], settings: str,
    start: float, groups: dict[str, list[str]],
) -> list[str]:
    """Run ``plan`` (``--jobs`` at a time, ``--threads`` each), print the mean wall time of each group
    of jobs and the sweep's, and add this invocation to the sweep log of ``log_folder``.

    Args:
        groups: label -> job names whose mean wall time is printed (a method's seeds).
        start: ``time.time()`` when the invocation began (a pretraining made for it counts).

    Returns:
        The names of the jobs that failed or were skipped.

    Raises:
        JobConfigMismatchError: a run folder holds a finished run made with another config.
    """
    outcomes = run_jobs(plan, max_parallel=args.jobs, threads=args.threads, progress=_print_event,
                        poll_interval_s=POLL_INTERVAL_S)
    walls = {o.job.name: o.wall_s for o in outcomes if o.status == "finished"}
    for label, names in groups.items():
        times = [walls[name] for name in names if name in walls]
        if times:
            print(f"   {label}: {statistics.mean(times) / 60:.1f} min per run (mean of {len(times)})")
    wall = (time.time() - start) / 60
    print(f"sweep wall time: {wall:.1f} min")
    if walls:
        append_sweep_record(log_folder, {"header": header, "settings": settings, "wall_min": round(wall, 1),
                                         "trained": sorted(walls)})
    return [o.job.name for o in outcomes if not o.ok]


def read_eval(folder: Path) -> dict[str, float] | None:
    """The ``eval.json`` of a run folder, None when the run has not finished."""
    path = Path(folder) / EVAL_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def per_seed(
    table: dict[str, dict[int, dict[str, float]]], formula: Callable[..., float], *methods: str
) -> dict[int, float]:
    """``formula(AP of methods[0], AP of methods[1], ...)`` for every seed where all have a finite AP.

    Args:
        table: method -> seed -> ``eval.json`` row.
    """
    if not all(m in table for m in methods):
        return {}
    seeds = sorted(set.intersection(*(set(table[m]) for m in methods)))
    values = {s: [table[m][s]["AP"] for m in methods] for s in seeds}
    return {s: formula(*aps) for s, aps in values.items() if all(finite(a) for a in aps)}


def seeds_text(values: dict[int, float]) -> str:
    """``seed 0 +4.0, seed 1 +5.0, seed 2 +3.0; mean +4.0 ± 1.0`` (one value: no spread)."""
    seeds = ", ".join(f"seed {s} {v:+.1f}" for s, v in values.items())
    return f"{seeds}; mean {mean_std(list(values.values()), signed=True)}"


class TargetCheck(NamedTuple):
    """One of the issue's targets: the per-seed values, and the verdict (None: too few seeds)."""

    text: str
    passed: bool | None

    def line(self) -> str:
        verdict = {True: "**PASS**", False: "**MISSED**", None: "**n/a**"}[self.passed]
        return f"- {self.text}: {verdict}"


def trained_lengths(folders: Sequence[Path]) -> str:
    """The ``solver.max_iter`` values of the finished runs among ``folders``, read from their
    ``config.yaml`` (so that ``--table-only`` shows what was trained, not what its arguments say)."""
    configs = [read_run_config(f) for f in folders if read_eval(f) is not None and (f / CONFIG_NAME).is_file()]
    lengths = {config.get("solver", {}).get("max_iter") for config in configs}
    return " / ".join(str(n) for n in sorted(n for n in lengths if n is not None))


def resolve_pretrained(value: str, table_only: bool) -> tuple[Path | None, str]:
    """The backbone checkpoint of ``--pretrained`` and a sentence on where it came from.

    ``auto`` trains the default ``msadkit pretrain`` checkpoint into the cache if it is not there
    (not with ``table_only``, which trains nothing).

    Raises:
        MsadkitError: a path that is not a file.
    """
    if value == "none":
        return None, "backbone from random initialisation (--pretrained none)"
    if value != "auto":
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise MsadkitError(f"--pretrained {value}: no such file (give a checkpoint, 'auto' or 'none')")
        return path, f"backbone from {value}"
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_backbone, cached_pretrained_path

    cached = cached_pretrained_path(PretrainSettings())
    if table_only:  # trains nothing, so it only names the file the runs were given
        return cached.resolve(), "backbone from the cached `msadkit pretrain` checkpoint"
    if cached.is_file():
        origin = f"backbone from the cached `msadkit pretrain` checkpoint {cached.name} (made before, reused)"
        return cached.resolve(), origin
    start = time.time()
    # Absolute, so that the runs' config.yaml name the file whatever MSADKIT_CACHE was relative to.
    path = cached_pretrained_backbone(log=print).resolve()
    return path, f"backbone from `msadkit pretrain` (defaults), made for this sweep in {time.time() - start:.0f} s"


def results_body(folder: Path, table: str, header: list[str], unit: str) -> str:
    """Machine, every invocation that trained runs of ``folder`` (date, command, wall time), settings, table."""
    lines = sweep_log_lines(folder, unit)
    if not lines:
        # Runs trained elsewhere: only this invocation's facts are known.
        lines = [*(f"- {line}" for line in header), "- wall time: not recorded (no sweep log)"]
    return "\n".join([*lines, "", table])


def write_results(path: Path | None, heading: str, body: str) -> None:
    """Put ``body`` under ``heading`` in the Markdown file ``path`` (nothing when None)."""
    if path is not None:
        replace_markdown_section(path, heading, body)
        print(f"\nwritten to {path} under '{heading}'")


def report_failures(failed: list[str]) -> int:
    """Print the jobs that did not finish; the script's exit status (1 when some did not)."""
    if not failed:
        return 0
    print(f"\n{len(failed)} job(s) failed or were skipped: {', '.join(failed)}", file=sys.stderr)
    return 1
