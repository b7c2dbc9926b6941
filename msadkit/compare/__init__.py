"""``msadkit compare``: distillation methods against a baseline, paired by seed, at one budget.

Given a track, methods, seeds and a folder, it trains per seed (one ``trainer.seed`` and one
pretrained backbone, so one initialisation and one data order for every model of the seed) the
track's teacher(s), the baseline (the student without a teacher), the step-matched control (the
baseline trained teacher + student iterations), on a track with ``@msad`` methods MSAD's
teacher-init ablation (its student from the MSAD teacher's weights, KD weight 0) and each method's
student (:mod:`.plan`); reuses
finished runs and refuses runs trained with other settings (:mod:`msadkit.jobs`); and writes one
table (Markdown, LaTeX, CSV) and one figure per track (:mod:`.table`, :mod:`.figure`): each
method's AP minus the baseline's of the same seed, with mean, sample std, 95 % t-interval and
Holm-corrected p-value (:mod:`msadkit.analysis.statistics`), its paired difference to the
step-matched control (and an ``@msad`` method's to the ablation), the AP of every seed, APs/APm/APl,
each run's bootstrap evaluation SE (:mod:`msadkit.analysis.bootstrap_ap`) and whether it reached
its plateau (validation AP rose by less than 1 AP over the last quarter of its schedule). A
method's weight is tuned on a tuning seed that is never reported (``--tune``: the official weight,
x0.25 and x4; :mod:`.tuning`).

Tracks (:mod:`.tracks`): **same-resolution**, a width-0.5 FCOS teacher and a width-0.25 student on
128 px images; **cross-resolution**, high-resolution teachers (the MSAD teacher with C-FF and a
plain FCOS) on 256 px images and a student on the 0.5x copy.

Sizes of the full comparison, and why. Both tracks, their ten default methods each, 5 seeds: 135
training runs, which must fit 120 minutes on 2 cores, two single-threaded runs at a time, so each
run has about 100 s of one core on average.

- Images: 128 px on the same-resolution track (the ADL / GID benchmark's size), 256 px on the
  cross-resolution one: MSAD pads batches to a multiple of 256 so that the 0.5x copy's levels line
  up with the teacher's, and a smaller image would cost a 256-pixel pass anyway.
- Dataset: 256 synthetic training images. Two validation splits of one generator (image ``i`` is
  the same image in both): during training 128 images at 128 px and 64 at 256 px, where an image
  costs four times as much (each run validates twice, at 3/4 of its length and at its end: the
  plateau mark); after training every run's final weights are evaluated on 512 images (128 px) and
  640 (256 px) with ``msadkit evaluate`` into ``<run>/report``, with the bootstrap: the AP the
  table reports. On the first splits a run's bootstrap evaluation SE measured a median 0.76 AP
  (128 px) and 1.00 AP (256 px), up to 1.3 and 2.0, and an SE falls as 1/sqrt(images); on the
  larger splits it measured a median 0.36 and 0.31 AP, up to 0.64 and 0.58 (the highest-AP runs,
  the teachers and controls), for a median 17 s (128 px) and 23 s (256 px) of one core per run.
- Model: slimmable ResNet-50 at width 0.25 (0.5 for the same-resolution teacher) with the MSAD
  demo's slim FPN and head (32 channels, 2 tower convs) on both tracks; FCOS throughout.
- Schedule: batch 8, LR 0.03 from the ``msadkit pretrain`` backbone; students, baselines and
  methods 150 iterations, teachers 300 (twice the students', as the ADL / GID demo teacher; at 200
  the high-resolution FCOS teacher of seed 0 had not left the start, 0.3 AP, at 300 it has 20), the
  step-matched control 450. Many runs are not at their plateau at these lengths (the 300-iteration
  teachers still gained 4-6 AP over their last quarter); the table marks every such run rather than
  the budget hiding it.
- Time: CPU time of one-thread 200- and 300-iteration runs on a 2-core AMD EPYC at load average
  about 2 (two runs at a time): per iteration a width-0.25 student 0.20-0.22 s, a method's student
  0.3-0.5 s (the teacher's forward pass and the term), the width-0.5 FCOS teacher 0.52 s, the
  high-resolution FCOS teacher 0.48 s, the MSAD teacher 0.83 s; about 10 s per run of start-up and
  its own evaluations. That makes 11,400 s of one core, 95 minutes at two runs at a time, plus the
  pretraining (a few minutes, cached after the first comparison). The reported evaluations on the
  larger splits add a median 18 s (128 px) and 23 s (256 px) of one core per run with their
  bootstrap, about 25 minutes for 140 runs at two at a time: about 125 minutes in all. Measured
  (benchmarks/RESULTS.md, "Method comparison"): 140 runs in 124 minutes of wall time on a machine
  shared with other work for its first 45 minutes, about 98 at the idle machine's rates (a method
  run 72 s, a control 100 s, a baseline 40 s); tuning (``--tune``: 3 weights x 20 methods and the
  tuning seed's teachers) 36 minutes of training and 11 of evaluation.

``--quick`` runs the whole path (two methods per track, seeds 0 and 1, 64-pixel images, 8 training
images, 4 iterations, a seconds-long pretraining) in a few minutes; its numbers mean nothing.
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
    launch_order,
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
    "launch_order",
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
