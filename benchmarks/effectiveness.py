"""What the effectiveness sweeps share: their options, running their plan, their report.

``msad_effectiveness`` and ``adl_gid_effectiveness`` define their experiments (which runs, which
configs, which targets); :func:`run_sweep` does the rest, the same for both. Every run is a job of
:mod:`msadkit.jobs`: ``--jobs`` of them train at a time with ``--threads`` torch threads each, a
job after the jobs it needs (a student after its teacher); a run folder keeps a ``job.json`` with
the resolved config, and a finished run is reused only when that config equals the one asked for
(another stops the sweep with an error naming the differing keys), while an interrupted one
resumes. Then the sweep prints its AP table (mean ± sample standard deviation over seeds) and its
targets; ``--results`` writes them, with the machine and every invocation that trained runs (the
sweep log, :data:`benchmarks.common.SWEEP_LOG`), under the sweep's RESULTS.md heading, and
``--table-only`` reprints them from the finished runs without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

from benchmarks.common import (
    append_sweep_record,
    mean_std,
    print_environment,
    replace_markdown_section,
    sweep_log_lines,
)
from msadkit.errors import MsadkitError
from msadkit.jobs import Job, JobEvent, command_job, msadkit_command, run_jobs
from msadkit.utils.run_folder import CONFIG_NAME, EVAL_NAME, read_run_config

__all__ = [
    "sweep_parser",
    "check_positive",
    "run_folder",
    "job_name",
    "method_overrides",
    "check_method_overrides",
    "add_tuning_seed_argument",
    "apply_tuning_seed",
    "tuning_root",
    "tuning_banner",
    "add_pretrained_argument",
    "resolve_pretrained",
    "pretrained_per_role",
    "automatic_roles",
    "pretrain_job",
    "pretrain_job_name",
    "missing_pretrainings",
    "run_sweep",
    "run_plan",
    "read_eval",
    "finished_runs",
    "metric_cells",
    "mean_ap",
    "finite",
    "per_seed",
    "seeds_text",
    "TargetCheck",
    "trained_lengths",
    "results_body",
    "write_results",
    "report_failures",
]

# Seconds between two looks at the running jobs: runs take minutes, and the machine is shared.
POLL_INTERVAL_S = 2.0


def sweep_parser(docstring: str, *, out: str, seeds_help: str = "trainer.seed values") -> argparse.ArgumentParser:
    """The argument parser of a sweep script, described by the first paragraph of its ``docstring``,
    with the options every sweep has: ``--out`` (default ``out``), ``--seeds``, ``--lr``, ``--jobs``,
    ``--threads``, ``--results``, ``--table-only`` and the config overrides for every run."""
    parser = argparse.ArgumentParser(
        description=docstring.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(out), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help=seeds_help)
    parser.add_argument("--lr", type=float, default=0.03, help="solver.base_lr of every run")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--results", type=Path, help="Markdown file to write the table into (with --table-only too)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    return parser


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """Exit with the usage error when one of the integer options ``names`` is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def run_folder(root: Path, method: str, seed: int) -> Path:
    """The run folder of one method's run at one ``trainer.seed``: ``<root>/<method>_s<seed>``."""
    return root / f"{method}_s{seed}"


def job_name(method: str, seed: int) -> str:
    """The job name of one method's run at one seed (the runner's progress lines and the sweep log
    show it; :func:`run_plan` groups the wall times by it)."""
    return f"{method} seed {seed}"


def method_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """The ``--set METHOD:KEY=VALUE`` overrides of one method, in the order given."""
    return [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == method]


def check_method_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, methods: Sequence[str]) -> None:
    """Exit with the usage error when a ``--set`` item is not ``METHOD:KEY=VALUE`` with one of ``methods``."""
    for item in args.set:
        method, _, override = item.partition(":")
        if method not in methods or "=" not in override:
            parser.error(f"--set takes METHOD:KEY=VALUE with METHOD one of {', '.join(methods)}; got {item!r}")


# The tuning protocol: settings are chosen on a seed of their own, never one of the reported seeds,
# whose runs go to a folder of their own and whose table is marked as tuning.


def add_tuning_seed_argument(parser: argparse.ArgumentParser, default: int) -> None:
    """``--tuning-seed [SEED]``: train only that seed (``default`` when given alone) into ``<out>/tuning``."""
    parser.add_argument("--tuning-seed", type=int, nargs="?", const=default, default=None,
                        help=f"train only this student seed (alone: {default}) into <out>/tuning, to choose settings")


def apply_tuning_seed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """With ``--tuning-seed``, train that seed alone; a reported seed of ``--seeds`` is refused, so
    that the settings chosen on it are never judged on it."""
    if args.tuning_seed is not None:
        if args.tuning_seed in args.seeds:
            parser.error(f"--tuning-seed {args.tuning_seed} is one of the reported --seeds {args.seeds}")
        args.seeds = [args.tuning_seed]


def tuning_root(args: argparse.Namespace) -> Path:
    """Folder of the runs of the seeds: ``<out>/tuning`` for the ``--tuning-seed``, else ``<out>``."""
    return args.out / "tuning" if args.tuning_seed is not None else args.out


def tuning_banner(args: argparse.Namespace) -> list[str]:
    """The lines above a tuning seed's table that say it is no reported result (none otherwise)."""
    if args.tuning_seed is None:
        return []
    return [f"**Tuning seed {args.tuning_seed}: for choosing the settings, not a reported result.**", ""]


# Where the backbones start: ``msadkit pretrain`` checkpoints, cached per slimmable width.


def add_pretrained_argument(parser: argparse.ArgumentParser) -> None:
    """``--pretrained``: one backbone checkpoint for every run, as :func:`resolve_pretrained` reads it."""
    parser.add_argument(
        "--pretrained", default="auto",
        help="backbone checkpoint of every run: a file, 'auto' (the cached `msadkit pretrain` default, made "
        "first if missing) or 'none' (random initialisation)",
    )


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


def pretrained_per_role(choice: Sequence[str], widths: Mapping[str, float]) -> dict[str, Path | None]:
    """role -> backbone checkpoint, from a ``--pretrained`` that names one per width (``nargs="+"``).

    Args:
        choice: ``["none"]``: random initialisation (None) for every role; ``["auto"]``: the cached
            ``msadkit pretrain`` file of every role's width (:func:`pretrain_job` makes a missing
            one); else checkpoint files for the first roles of ``widths``, the others automatic.
        widths: role -> slimmable width of its backbone, in the order ``--pretrained`` names files.
    """
    if list(choice) == ["none"]:
        return dict.fromkeys(widths)
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path

    automatic = {role: cached_pretrained_path(PretrainSettings(width=width)) for role, width in widths.items()}
    files = [] if list(choice) == ["auto"] else [Path(path) for path in choice]
    return automatic | dict(zip(widths, files))


def automatic_roles(choice: Sequence[str], widths: Mapping[str, float]) -> list[str]:
    """The roles whose checkpoint :func:`pretrained_per_role` makes the cached ``msadkit pretrain`` file."""
    if list(choice) == ["none"]:
        return []
    return list(widths)[0 if list(choice) == ["auto"] else len(choice):]


def pretrain_job_name(width: float) -> str:
    return f"pretrain width {width:g}"


def pretrain_job(width: float, checkpoint: Path, out: Path) -> Job:
    """``msadkit pretrain --width W`` with its defaults otherwise, which write ``checkpoint`` (the
    cached file of that width); its ``job.json`` and log go to ``<out>/pretrain_w<W>``."""
    return command_job(pretrain_job_name(width), msadkit_command("pretrain", "--width", f"{width:g}"),
                       out / f"pretrain_w{width:g}", outputs=[checkpoint], log_name="pretrain.log")


def missing_pretrainings(
    choice: Sequence[str], widths: Mapping[str, float], out: Path, *, order: Sequence[str], not_needed: Sequence[str] = ()
) -> dict[str, Job]:
    """role -> the :func:`pretrain_job` that makes its checkpoint, in ``order``, for the roles whose
    checkpoint is automatic (:func:`automatic_roles`) and not yet made; ``not_needed`` roles get none
    (their runs are finished)."""
    automatic, checkpoints = automatic_roles(choice, widths), pretrained_per_role(choice, widths)
    return {role: pretrain_job(widths[role], checkpoints[role], out) for role in order
            if role in automatic and role not in not_needed and not checkpoints[role].is_file()}


def run_sweep(
    args: argparse.Namespace, *, root: Path, prepare: Callable[[], str], plan: Callable[[], Sequence[Job]],
    groups: dict[str, list[str]], table: Callable[[], str], heading: str, unit: str,
) -> int:
    """A sweep script's ``main`` after parsing: print the environment, prepare, train the plan (not
    with ``--table-only``), print the table, write it under ``heading`` of ``--results``.

    Args:
        root: the folder of the runs, and of the sweep log.
        prepare: makes ready what the runs need (a pretrained backbone) and returns the settings
            line; its time counts in the sweep's wall time.
        groups: label -> job names whose mean wall time is printed (:func:`run_plan`).
        table: the Markdown table of the finished runs, with its target lines.
        unit: what the sweep log counts (``runs``, ``jobs``).

    Returns:
        The exit status: 0; 1 when a job failed or was skipped; 2 on an error of msadkit (a finished
        run with another config, a missing checkpoint), printed on stderr.
    """
    header = print_environment()
    start = time.time()
    failed: list[str] = []
    try:
        settings = prepare()
        print(f"runs: {root}; {settings}", flush=True)
        if not args.table_only:
            root.mkdir(parents=True, exist_ok=True)
            failed = run_plan(plan(), args, log_folder=root, header=header, settings=settings, start=start,
                              groups=groups)
    except MsadkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = table()
    print(f"\n{text}")
    write_results(args.results, heading, results_body(root, text, header, unit))
    return report_failures(failed)


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


def finished_runs(root: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, dict[int, dict[str, float]]]:
    """method -> seed -> ``eval.json`` row of the finished runs under ``root`` (:func:`run_folder`),
    in the order of ``methods``; a method with no finished run is left out."""
    table = {method: {seed: read_eval(run_folder(root, method, seed)) for seed in seeds} for method in methods}
    return {method: {seed: row for seed, row in rows.items() if row} for method, rows in table.items() if any(rows.values())}


def metric_cells(rows: Mapping[int, Mapping[str, float]], metrics: Sequence[str]) -> list[str]:
    """Per metric, ``"mean ± sample std"`` over the seeds of ``rows`` (seed -> ``eval.json`` row)."""
    return [mean_std([row[metric] for row in rows.values()]) for metric in metrics]


def mean_ap(rows: Mapping[int, Mapping[str, float]]) -> float:
    """The mean AP over the seeds of ``rows`` whose AP is finite; NaN when none is."""
    values = [row["AP"] for row in rows.values() if finite(row["AP"])]
    return statistics.mean(values) if values else float("nan")


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
