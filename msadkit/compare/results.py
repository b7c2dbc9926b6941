"""What a comparison's run folders say: each run's AP, its evaluation SE and plateau mark; each
method's paired difference to the baseline.

A run is read from its folder alone: ``config.yaml`` (its length), ``metrics.jsonl`` (the validation
rows of ``trainer.eval_period``), and from its reported evaluation (``<run>/report`` when the budget
has a larger validation split for it, else the run's own) ``eval.json`` (AP, APs, APm, APl) and
``detections_val.json`` (the bootstrap of :mod:`msadkit.analysis.bootstrap_ap`). The statistics
are :mod:`msadkit.analysis.statistics`': differences paired by seed, their mean, sample std, 95 %
t-interval and p-value, Holm-corrected over the methods of a track.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from msadkit.analysis.bootstrap_ap import cached_bootstrap
from msadkit.analysis.statistics import PairedComparison, compare_to_baseline
from msadkit.compare.methods import MSAD_SUFFIX
from msadkit.compare.plan import ABLATION, BASELINE, CONTROL, METHOD, TEACHER, PlannedRun
from msadkit.errors import MsadkitError
from msadkit.utils.run_folder import EVAL_NAME, METRICS_NAME, read_run_config

__all__ = [
    "PLATEAU_GAIN",
    "VALIDATION_KEY",
    "Plateau",
    "plateau_of",
    "RunResult",
    "read_run",
    "ModelSummary",
    "summarize",
]

# A run counts as plateaued when its validation AP rose by less than this over the last quarter.
PLATEAU_GAIN = 1.0
VALIDATION_KEY = "val/AP"
_KIND_ORDER = {TEACHER: 0, BASELINE: 1, CONTROL: 2, ABLATION: 3, METHOD: 4}
# The references a method is also compared with, besides the baseline (what the paper's claims need).
REFERENCES = (CONTROL, ABLATION)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Plateau:
    """Whether a run reached its plateau.

    Attributes:
        gain: validation AP at the end minus at the last validation at or before 3/4 of the run
            (None: no such pair of validations).
        plateaued: ``gain < threshold`` (None: unknown).
        threshold: the AP gain below which the run counts as plateaued.
    """

    gain: float | None
    plateaued: bool | None
    threshold: float = PLATEAU_GAIN

    @property
    def mark(self) -> str:
        """``""`` plateaued, ``"†"`` still rising, ``"?"`` unknown (no validation rows)."""
        return {True: "", False: "†", None: "?"}[self.plateaued]


def plateau_of(
    rows: Sequence[Mapping[str, Any]], max_iter: int, *, final_ap: float | None = None,
    threshold: float = PLATEAU_GAIN,
) -> Plateau:
    """The plateau mark of a run from its validation rows (``{"iter": i, "val/AP": ap}``).

    Args:
        rows: validation rows in any order (rows without a finite ``val/AP`` are ignored).
        max_iter: the run's length.
        final_ap: the AP at the end (``eval.json``), used when no validation row is at ``max_iter``.
        threshold: the gain below which the run counts as plateaued.
    """
    points = {int(row["iter"]): float(row[VALIDATION_KEY]) for row in rows if _finite(row.get(VALIDATION_KEY))}
    if max_iter not in points and _finite(final_ap):
        points[max_iter] = float(final_ap)  # type: ignore[arg-type]
    ordered = sorted(points.items())
    start = 0.75 * max_iter
    before = [ap for iteration, ap in ordered if iteration <= start]
    if not before or not ordered or ordered[-1][0] <= start:
        return Plateau(None, None, threshold)
    gain = ordered[-1][1] - before[-1]
    return Plateau(gain, gain < threshold, threshold)


@dataclass(frozen=True)
class RunResult:
    """One finished run of a comparison.

    Attributes:
        model, kind, seed: as planned (:class:`~msadkit.compare.plan.PlannedRun`).
        run_dir: its folder.
        metrics: the reported evaluation's ``eval.json`` (AP, AP50, AP75, APs, APm, APl; NaN where undefined).
        iterations: ``solver.max_iter`` of its config.
        ap_se: the bootstrap evaluation SE of its AP (None: no ``detections_val.json``).
        plateau: its plateau mark.
        scale: a method's weight as trained (its config's ``distill.losses`` weight; None otherwise).
    """

    model: str
    kind: str
    seed: int
    run_dir: Path
    metrics: dict[str, float]
    iterations: int
    ap_se: float | None
    plateau: Plateau
    scale: float | None = None

    @property
    def ap(self) -> float:
        return float(self.metrics.get("AP", math.nan))


def _validation_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if isinstance(row, dict) and VALIDATION_KEY in row and "iter" in row]


def _eval_metrics(folder: Path) -> dict[str, float] | None:
    """The numbers of ``folder/eval.json``; None when there is none."""
    path = folder / EVAL_NAME
    if not path.is_file():
        return None
    try:
        return {key: float(value) for key, value in json.loads(path.read_text()).items()
                if isinstance(value, (int, float))}
    except ValueError as exc:
        raise MsadkitError(f"{path} is not valid JSON: {exc}") from None


def read_run(planned: PlannedRun, *, bootstrap_samples: int = 200) -> RunResult | None:
    """The result of a planned run, None while its reported evaluation has no ``eval.json``.

    Args:
        planned: the run.
        bootstrap_samples: resamples of the validation images for the evaluation SE (0: none).
    """
    run_dir, result_dir = planned.run_dir, planned.result_dir
    metrics = _eval_metrics(result_dir)
    own = metrics if result_dir == run_dir else _eval_metrics(run_dir)
    if metrics is None or own is None:
        return None
    config = read_run_config(run_dir)
    iterations = int(config["solver"]["max_iter"])
    se = None
    if bootstrap_samples >= 2:
        try:
            se = cached_bootstrap(result_dir, bootstrap_samples).metrics["AP"][1]
        except MsadkitError:
            se = None  # a run evaluated before detections were kept: its SE is unknown, not an error
    # The plateau compares validations on one split: the training-time one, at 3/4 and at the end.
    plateau = plateau_of(_validation_rows(run_dir), iterations, final_ap=own.get("AP"))
    return RunResult(planned.model, planned.kind, planned.seed, run_dir, metrics, iterations, se, plateau,
                     _trained_scale(config) if planned.kind == METHOD else None)


def _trained_scale(config: Mapping[str, Any]) -> float | None:
    """The weight a method's run trained with (every term of a method shares it), from its config;
    what a table shows must be what ran, even if ``tuning.json`` changed since."""
    weights = {float(entry.get("weight", 1.0)) for entry in config.get("distill", {}).get("losses") or []
               if isinstance(entry, dict)}
    return weights.pop() if len(weights) == 1 else None


@dataclass
class ModelSummary:
    """Every seed of one model, and its paired difference to the baseline.

    Attributes:
        model, kind: as planned.
        runs: seed -> its finished run.
        expected_seeds: the seeds planned.
        iterations: the planned length.
        scale: a method's weight multiple as planned; :meth:`trained_scales` says what ran.
        comparison: the paired difference to the baseline (None: baseline, teachers, or fewer
            than 2 seeds both finished).
        references: a method's paired difference to the step-matched control (key :data:`CONTROL`)
            and, for an ``@msad`` method, to the teacher-init ablation (key :data:`ABLATION`); each
            a single comparison (no Holm correction across them).
    """

    model: str
    kind: str
    expected_seeds: list[int]
    iterations: int
    scale: float | None = None
    runs: dict[int, RunResult] = field(default_factory=dict)
    comparison: PairedComparison | None = None
    references: dict[str, PairedComparison] = field(default_factory=dict)

    def values(self, metric: str) -> list[float]:
        """``metric`` of every finished seed that defines it, in seed order."""
        return [run.metrics[metric] for _, run in sorted(self.runs.items())
                if _finite(run.metrics.get(metric))]

    def trained_scales(self) -> list[float]:
        """The distinct weights the finished runs trained with."""
        return sorted({run.scale for run in self.runs.values() if run.scale is not None})

    def ap_by_seed(self) -> dict[int, float]:
        return {seed: run.ap for seed, run in sorted(self.runs.items()) if _finite(run.ap)}


def summarize(planned: Sequence[PlannedRun], results: Mapping[Path, RunResult | None]) -> list[ModelSummary]:
    """One :class:`ModelSummary` per model, teachers first, then baseline, control, ablation, methods.

    Every method with at least 2 seeds paired with the baseline is compared to it, Holm-corrected
    over those methods; the control and the ablation are compared to the baseline alone (outside
    the family: they are references a method must beat, not methods). Each method is also compared
    with the control, and an ``@msad`` method with the ablation (:attr:`ModelSummary.references`).

    Args:
        planned: the track's reported runs.
        results: run folder -> its result (None: unfinished).
    """
    models: dict[str, ModelSummary] = {}
    for run in planned:
        summary = models.setdefault(run.model, ModelSummary(run.model, run.kind, [], run.iterations, run.scale))
        summary.expected_seeds.append(run.seed)
        result = results.get(run.run_dir)
        if result is not None:
            summary.runs[run.seed] = result
    ordered = sorted(models.values(), key=lambda m: _KIND_ORDER[m.kind])
    baseline = next((m.ap_by_seed() for m in ordered if m.kind == BASELINE), {})
    methods = {m.model: m.ap_by_seed() for m in ordered if m.kind == METHOD}
    paired = {name: aps for name, aps in methods.items() if len(set(aps) & set(baseline)) >= 2}
    comparisons = compare_to_baseline(baseline, paired) if paired else {}
    references = {m.kind: m.ap_by_seed() for m in ordered if m.kind in REFERENCES}
    for summary in ordered:
        if summary.kind in REFERENCES:
            summary.comparison = _single_comparison(baseline, summary)
        elif summary.model in comparisons:
            summary.comparison = comparisons[summary.model]
        if summary.kind != METHOD:
            continue
        for kind, reference in references.items():
            if kind == ABLATION and not summary.model.endswith(MSAD_SUFFIX):
                continue
            comparison = _single_comparison(reference, summary)
            if comparison is not None:
                summary.references[kind] = comparison
    return ordered


def _single_comparison(reference: Mapping[int, float], summary: ModelSummary) -> PairedComparison | None:
    """``summary``'s paired difference to ``reference`` (seed -> AP); None below 2 shared seeds."""
    values = summary.ap_by_seed()
    if len(set(values) & set(reference)) < 2:
        return None
    return compare_to_baseline(reference, {summary.model: values})[summary.model]
