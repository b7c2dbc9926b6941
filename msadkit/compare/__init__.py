"""``msadkit compare``: distillation methods against a baseline, paired by seed, at one budget.

SIZES_PLACEHOLDER
"""

from msadkit.compare.figure import plot_comparison
from msadkit.compare.methods import WEIGHT_SCALES, Method, parse_method, parse_methods, registered_terms
from msadkit.compare.plan import PlannedRun, comparison_runs, pretrain_jobs, tuning_runs
from msadkit.compare.results import PLATEAU_GAIN, ModelSummary, Plateau, RunResult, plateau_of, read_run, summarize
from msadkit.compare.run import (
    DEFAULT_SEEDS,
    DEFAULT_TUNING_SEED,
    QUICK_SEEDS,
    ComparisonOutcome,
    ComparisonRequest,
    collect,
    make_request,
    planned_runs,
    run_comparison,
    run_tuning,
    write_outputs,
)
from msadkit.compare.table import ComparisonTable, csv_text, latex, markdown
from msadkit.compare.tracks import TRACKS, Budget, Track, parse_tracks, track_named
from msadkit.compare.tuning import TUNING_NAME, chosen_scales, read_tuning

__all__ = [
    "plot_comparison",
    "WEIGHT_SCALES",
    "Method",
    "parse_method",
    "parse_methods",
    "registered_terms",
    "PlannedRun",
    "comparison_runs",
    "pretrain_jobs",
    "tuning_runs",
    "PLATEAU_GAIN",
    "ModelSummary",
    "Plateau",
    "RunResult",
    "plateau_of",
    "read_run",
    "summarize",
    "DEFAULT_SEEDS",
    "DEFAULT_TUNING_SEED",
    "QUICK_SEEDS",
    "ComparisonOutcome",
    "ComparisonRequest",
    "collect",
    "make_request",
    "planned_runs",
    "run_comparison",
    "run_tuning",
    "write_outputs",
    "ComparisonTable",
    "csv_text",
    "latex",
    "markdown",
    "TRACKS",
    "Budget",
    "Track",
    "parse_tracks",
    "track_named",
    "TUNING_NAME",
    "chosen_scales",
    "read_tuning",
]
