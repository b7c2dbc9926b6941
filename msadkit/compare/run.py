"""Running a comparison: check the request, plan it, run the jobs, collect the table and figure.

:func:`make_request` turns what a user gave (command-line options or notebook parameters) into a
checked :class:`ComparisonRequest`, each error naming the argument; :func:`run_comparison` trains
what is missing (through :func:`msadkit.jobs.run_jobs`: finished runs with the same config are
reused, one with other settings stops the plan naming the differing keys) and writes every track's
table and figure; :func:`run_tuning` trains the tuning runs and writes ``tuning.json``;
:func:`collect` builds the tables from the run folders alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from msadkit.analysis.figure_style import SAVE_DPI
from msadkit.compare.figure import plot_comparison
from msadkit.compare.methods import Method, parse_methods
from msadkit.compare.plan import (
    ABLATION,
    BASELINE,
    CONTROL,
    METHOD,
    TEACHER,
    PlannedRun,
    comparison_runs,
    jobs_of,
    pretrain_jobs,
    track_dir,
    tuning_runs,
)
from msadkit.compare.results import read_run, summarize
from msadkit.compare.table import ComparisonTable, csv_text, latex, markdown, runs_csv_text
from msadkit.compare.tracks import Budget, Track, parse_tracks
from msadkit.compare.tuning import chosen_scales, read_tuning, tuning_record, write_tuning
from msadkit.errors import ConfigError
from msadkit.jobs import JobOutcome, ProgressCallback, log_progress, run_jobs
from msadkit.utils.run_folder import write_text_atomic

__all__ = [
    "DEFAULT_SEEDS",
    "QUICK_SEEDS",
    "DEFAULT_TUNING_SEED",
    "ComparisonRequest",
    "ComparisonOutcome",
    "make_request",
    "planned_runs",
    "launch_order",
    "run_comparison",
    "run_tuning",
    "collect",
    "write_outputs",
]

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
DEFAULT_TUNING_SEED = 100
OUTPUT_STEM = "comparison"
_LAUNCH_ORDER = {TEACHER: 0, CONTROL: 1, BASELINE: 2, ABLATION: 3, METHOD: 4}


@dataclass(frozen=True)
class ComparisonRequest:
    """A checked comparison.

    Attributes:
        tracks: the tracks, in order.
        methods: track name -> its methods.
        seeds: the reported seeds (at least 2).
        tuning_seed: the seed tuning runs on (not among ``seeds``).
        out: the comparison folder.
        budgets: track name -> its sizes and schedule.
        overrides: config overrides for every run.
        jobs, threads: runs at a time, torch threads each.
        bootstrap_samples: resamples behind each run's evaluation SE.
    """

    tracks: tuple[Track, ...]
    methods: dict[str, list[Method]]
    seeds: tuple[int, ...]
    tuning_seed: int
    out: Path
    budgets: dict[str, Budget]
    overrides: tuple[str, ...] = ()
    jobs: int = 2
    threads: int = 1
    bootstrap_samples: int = 200


@dataclass
class ComparisonOutcome:
    """What a comparison produced: each track's table, its files, and the jobs that did not finish."""

    tables: dict[str, ComparisonTable] = field(default_factory=dict)
    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    failed: list[JobOutcome] = field(default_factory=list)


def _whole(value: Any, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{argument} must be a whole number, got {value!r}")
    return value


def make_request(
    tracks: Sequence[str] | str,
    *,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    tuning_seed: int = DEFAULT_TUNING_SEED,
    out: str | Path = "runs/compare",
    quick: bool = False,
    iterations: int | None = None,
    teacher_iterations: int | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 2,
    threads: int = 1,
    bootstrap_samples: int = 200,
    cli: bool = True,
) -> ComparisonRequest:
    """Check a comparison's arguments and resolve its defaults.

    Args:
        tracks: ``same-resolution``, ``cross-resolution`` or ``both`` (one name or several).
        methods: method names (:mod:`msadkit.compare.methods`); None: every track's default list
            (a short one with ``quick``).
        seeds: reported seeds; None: 0-4 (0, 1 with ``quick``).
        tuning_seed: the tuning seed, never reported.
        out: the comparison folder.
        quick: tiny sizes and iterations (:attr:`Track.quick_budget`): checks the whole path in minutes.
        iterations, teacher_iterations: change the students' / teachers' length of the budget.
        overrides: ``key=value`` config overrides for every run.
        jobs, threads: runs at a time and torch threads per run.
        bootstrap_samples: resamples of the validation images for the evaluation SE.
        cli: name arguments as the command line does (``--tuning-seed``) or as the notebook's
            parameters (``tuning_seed``).

    Raises:
        ConfigError: an unknown track or term, fewer than 2 seeds, a repeated seed, the tuning seed
            among the reported ones, a bad size; one line naming the argument.
    """
    def name(key: str) -> str:
        return f"--{key.replace('_', '-')}" if cli else key

    chosen = parse_tracks([tracks] if isinstance(tracks, str) else list(tracks), argument=name("track"))
    if isinstance(seeds, int) or isinstance(methods, str):  # one value where a list belongs
        seeds = [seeds] if isinstance(seeds, int) else seeds
        methods = [methods] if isinstance(methods, str) else methods
    seed_list = list(QUICK_SEEDS if quick else DEFAULT_SEEDS) if seeds is None else list(seeds)
    for seed in seed_list:
        _whole(seed, name("seeds"))
    if len(seed_list) < 2:
        raise ConfigError(f"{name('seeds')}: a paired comparison needs at least 2 seeds, got {len(seed_list)} "
                          f"({' '.join(map(str, seed_list)) or 'none'})")
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"{name('seeds')}: a seed is repeated in {' '.join(map(str, seed_list))}")
    _whole(tuning_seed, name("tuning_seed"))
    if tuning_seed in seed_list:
        raise ConfigError(f"{name('tuning_seed')} {tuning_seed} is one of the reported {name('seeds')}: "
                          "a weight tuned on a seed must not be reported on it")
    for key, value in (("jobs", jobs), ("threads", threads)):
        if _whole(value, name(key)) < 1:
            raise ConfigError(f"{name(key)} must be >= 1, got {value}")
    if _whole(bootstrap_samples, name("bootstrap_samples")) < 2:
        raise ConfigError(f"{name('bootstrap_samples')} must be >= 2, got {bootstrap_samples}")
    for item in overrides:
        if "=" not in str(item):
            raise ConfigError(f"{name('overrides')}: {item!r} is not a key=value config override")
    budgets = {}
    for track in chosen:
        budget = track.quick_budget if quick else track.budget
        if iterations is not None:
            budget = replace(budget, iterations=_whole(iterations, name("iterations")))
        if teacher_iterations is not None:
            budget = replace(budget, teacher_iterations=_whole(teacher_iterations, name("teacher_iterations")))
        budget.check()
        budgets[track.name] = budget
    per_track = {}
    for track in chosen:
        names = list(methods) if methods is not None else list(track.quick_methods if quick else track.methods)
        per_track[track.name] = parse_methods(names, track=track.name, argument=name("methods"))
    return ComparisonRequest(tuple(chosen), per_track, tuple(seed_list), tuning_seed,
                             Path(out).expanduser().absolute(), budgets, tuple(map(str, overrides)), jobs, threads,
                             bootstrap_samples)


def _scales(request: ComparisonRequest, track: Track) -> dict[str, float]:
    return chosen_scales(read_tuning(track_dir(request.out, track)), request.tuning_seed)


def planned_runs(request: ComparisonRequest) -> dict[str, list[PlannedRun]]:
    """Track name -> its reported runs (weights from the track's ``tuning.json``, else official)."""
    return {
        track.name: comparison_runs(request.out, track, request.methods[track.name], request.seeds,
                                    request.budgets[track.name], scales=_scales(request, track),
                                    overrides=request.overrides, bootstrap_samples=request.bootstrap_samples)
        for track in request.tracks
    }


def launch_order(request: ComparisonRequest, runs: dict[str, list[PlannedRun]]) -> list[PlannedRun]:
    """Every track's runs in the order they start: the teachers (the methods wait for them), the long
    controls, the baselines, the ablations, the methods; within each kind seed by seed across the
    tracks, so that a comparison stopped early has whole seeds of both tracks rather than every
    seed of one."""
    position = {seed: k for k, seed in enumerate(request.seeds)}
    return sorted((run for track_runs in runs.values() for run in track_runs),
                  key=lambda run: (_LAUNCH_ORDER[run.kind], position.get(run.seed, 0)))


def _run_plan(request: ComparisonRequest, runs: dict[str, list[PlannedRun]],
              progress: ProgressCallback | None) -> list[JobOutcome]:
    plan = jobs_of(pretrain_jobs(request.out, request.tracks, request.budgets), launch_order(request, runs))
    outcomes = run_jobs(plan, max_parallel=request.jobs, threads=request.threads, progress=progress,
                        poll_interval_s=1.0)
    return [outcome for outcome in outcomes if not outcome.ok]


def collect(request: ComparisonRequest, runs: dict[str, list[PlannedRun]] | None = None) -> dict[str, ComparisonTable]:
    """Every track's table from its run folders (unfinished runs are left out and listed in the notes)."""
    runs = runs if runs is not None else planned_runs(request)
    tables = {}
    for track in request.tracks:
        track_runs = runs[track.name]
        results = {run.run_dir: read_run(run, bootstrap_samples=request.bootstrap_samples) for run in track_runs}
        tables[track.name] = ComparisonTable(
            track, request.seeds, summarize(track_runs, results), request.budgets[track.name],
            read_tuning(track_dir(request.out, track)), request.tuning_seed, request.bootstrap_samples,
        )
    return tables


def write_outputs(table: ComparisonTable, folder: str | Path) -> dict[str, Path]:
    """``comparison.md``, ``.tex``, ``.csv``, ``comparison_runs.csv`` and ``comparison.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": write_text_atomic(folder / f"{OUTPUT_STEM}.md", markdown(table)),
        "latex": write_text_atomic(folder / f"{OUTPUT_STEM}.tex", latex(table)),
        "csv": write_text_atomic(folder / f"{OUTPUT_STEM}.csv", csv_text(table)),
        "runs_csv": write_text_atomic(folder / f"{OUTPUT_STEM}_runs.csv", runs_csv_text(table)),
    }
    figure = plot_comparison(table, tracked=False)
    figures = folder / f"{OUTPUT_STEM}.png"
    figure.savefig(figures, dpi=SAVE_DPI)
    files["figure"] = figures
    return files


def run_comparison(
    request: ComparisonRequest, *, train: bool = True, progress: ProgressCallback | None = log_progress
) -> ComparisonOutcome:
    """Train what is missing (``train``), then write every track's table and figure into ``<out>/<track>``.

    Raises:
        JobConfigMismatchError: a run folder holds a finished run made with other settings (or
            other weights than ``tuning.json`` now chooses); nothing was trained.
    """
    runs = planned_runs(request)
    outcome = ComparisonOutcome()
    if train:
        outcome.failed = _run_plan(request, runs, progress)
    outcome.tables = collect(request, runs)
    for track in request.tracks:
        outcome.files[track.name] = write_outputs(outcome.tables[track.name], track_dir(request.out, track))
    return outcome


def run_tuning(
    request: ComparisonRequest, *, progress: ProgressCallback | None = log_progress
) -> tuple[dict[str, Path], list[JobOutcome]]:
    """Train every method at 1x, 0.25x and 4x its official weight on the tuning seed, and write each
    track's ``tuning.json`` with the chosen weights.

    Returns:
        track name -> its ``tuning.json``, and the jobs that did not finish.
    """
    runs = {track.name: tuning_runs(request.out, track, request.methods[track.name], request.tuning_seed,
                                    request.budgets[track.name], overrides=request.overrides,
                                    bootstrap_samples=request.bootstrap_samples)
            for track in request.tracks}
    failed = _run_plan(request, runs, progress)
    paths = {track.name: write_tuning(track_dir(request.out, track), tuning_record(runs[track.name],
                                                                                   request.tuning_seed))
             for track in request.tracks}
    return paths, failed
