"""ADL, SAD and GID on the synthetic dataset: does distillation beat the baseline student?

Trains, from the packaged demo configs of one detector family (``--detector``, FCOS by default):

- the teacher (``gid/fcos_teacher_demo``: slimmable R-50 width 0.5, longer schedule), once;
- its pseudo-labels on the synthetic ``unlabeled`` split (``msadkit pseudo-label``);
- for every ``trainer.seed``, the width-0.25 student as baseline (``adl/fcos_student_demo``), with
  ADL (``adl/fcos_adl_demo``), with ADL on labeled + pseudo-labeled images (``adl/fcos_sad_demo``),
  with GID (``gid/fcos_gid_demo``) and with GID + MSAD features (``gid/fcos_gid_msad_demo``),

as jobs of :mod:`benchmarks.effectiveness` (``--jobs`` single-threaded runs at a time; how a finished
run is reused). Every backbone starts from the ``msadkit pretrain`` checkpoint of its width
(``--pretrained auto``: 0.25 for the students, 0.5 for the teacher, made once in the msadkit cache
by the first jobs), at LR ``--lr`` for all runs.

Then the COCO AP table: mean ± std over seeds, each method's gain over the baseline paired by seed
(mean ± sample std, n-1, of the per-seed differences) and the verdict: PASS when the gain is >= 1.0
AP and >= 2 x its std, else MISSED; ``--results`` writes it under ``## ADL and GID on the synthetic
dataset`` (a tuning table under ``...: tuning runs``).

Protocol: choose the settings on a tuning seed (``--tuning-seed``, 100 by default, never a reported
seed; its students go to ``<out>/tuning/``, its table is marked as tuning), then run the reported
seeds once with them, from the same teacher (``<out>/teacher`` or ``--teacher``). A method's own
settings go in ``--set METHOD:KEY=VALUE`` (the teacher's config, and so its reuse, stays unchanged).
The defaults (demo iteration counts at 128 px, 128 validation images) take an estimated 27 minutes
on an idle 2-core machine, both pretrainings included (RESULTS.md has the measured times).

    MSADKIT_CACHE=<cache folder> python -m benchmarks.adl_gid_effectiveness --out runs/adl_gid --tuning-seed
    MSADKIT_CACHE=<cache folder> python -m benchmarks.adl_gid_effectiveness --out runs/adl_gid \\
        --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import markdown_table, mean_std
from benchmarks.effectiveness import (
    add_tuning_seed_argument,
    apply_tuning_seed,
    check_method_overrides,
    check_positive,
    finished_runs,
    job_name,
    method_overrides,
    metric_cells,
    missing_pretrainings,
    pretrain_job_name,
    pretrained_per_role,
    read_eval,
    run_folder,
    run_sweep,
    sweep_parser,
    tuning_banner,
    tuning_root,
)
from msadkit.jobs import Job, command_job, msadkit_command, training_job

HEADING = "## ADL and GID on the synthetic dataset"
TUNING_HEADING = HEADING + ": tuning runs"
TEACHER = "teacher"
PSEUDO_LABELS = "pseudo-labels"
DEFAULT_TUNING_SEED = 100
# Slimmable widths of the students' and the teacher's backbones, in the order --pretrained names their files.
WIDTHS = {"student": 0.25, TEACHER: 0.5}
# The teacher's pretraining first: the teacher, on the critical path, waits for it.
PRETRAIN_ORDER = (TEACHER, "student")
TARGET_GAIN, TARGET_STDS = 1.0, 2.0  # every method's paired AP gain over the baseline: >= 1 AP and >= 2 std
LABELS = {
    "baseline": "student baseline (width 0.25)",
    "adl": "+ ADL",
    "sad": "+ ADL with pseudo-labels (SAD)",
    "gid": "+ GID",
    "gid_msad": "+ GID + MSAD features",
}
# Per detector family: the teacher's packaged config, then each student's.
CONFIGS = {
    "fcos": {TEACHER: "gid/fcos_teacher_demo", "baseline": "adl/fcos_student_demo", "adl": "adl/fcos_adl_demo",
             "sad": "adl/fcos_sad_demo", "gid": "gid/fcos_gid_demo", "gid_msad": "gid/fcos_gid_msad_demo"},
    "retinanet": {TEACHER: "adl/retinanet_teacher_demo", "baseline": "adl/retinanet_student_demo",
                  "adl": "adl/retinanet_adl_demo", "sad": "adl/retinanet_sad_demo", "gid": "gid/retinanet_gid_demo",
                  "gid_msad": "gid/retinanet_gid_msad_demo"},
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def teacher_dir(args: argparse.Namespace) -> Path:
    return args.teacher if args.teacher is not None else args.out / TEACHER


def student_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    """The run folder of a student, under :func:`tuning_root` (the teacher stays in its own)."""
    return run_folder(tuning_root(args), method, seed)


def pseudo_labels(args: argparse.Namespace) -> Path:
    return teacher_dir(args) / "pseudo_labels.json"


def schedule(iters: int) -> list[str]:
    # The demo schedule's shape: LR steps at 80 % and 93 % of training, warm-up over the first 1/6.
    return [
        f"solver.max_iter={iters}",
        f"solver.steps=[{int(iters * 0.8)}, {int(iters * 0.93)}]",
        f"solver.warmup_iters={max(1, iters // 6)}",
        f"trainer.checkpoint_period={iters}",
    ]


def data_overrides(args: argparse.Namespace) -> list[str]:
    size = args.image_size
    return [
        f"data.synthetic.image_size={size}",
        f"data.synthetic.num_val={args.num_val}",
        f"data.synthetic.num_unlabeled={args.num_unlabeled}",
        # Multi-scale training around the image size, as the 256 px demo does (224..288).
        f"data.train_short_sides=[{size * 7 // 8}, {size}, {size * 9 // 8}]",
        f"data.train_max_size={2 * size}",
        f"data.test_short_side={size}",
        f"data.test_max_size={2 * size}",
        "trainer.progress_bar=false",
    ]


def run_overrides(args: argparse.Namespace, role: str, method: str, seed: int, iters: int,
                  comparison: Sequence[str] = ()) -> list[str]:
    """The config overrides of one run: seed, schedule, ``role``'s backbone start (its pretrained
    checkpoint, if any) and LR, the data, what ``comparison`` adds (the teacher, the pseudo-labels),
    then the overrides for every run and the ``--set`` ones of ``method``."""
    weights = pretrained_per_role(args.pretrained, WIDTHS)[role]
    start = [f"model.backbone.weights={weights}"] if weights is not None else []
    return [f"trainer.seed={seed}", *schedule(iters), *start, f"solver.base_lr={args.lr:g}", *data_overrides(args),
            *comparison, *args.overrides, *method_overrides(args, method)]


def teacher_job(args: argparse.Namespace, needs: Sequence[str] = ()) -> Job:
    overrides = run_overrides(args, TEACHER, TEACHER, 0, args.teacher_iters)
    return training_job(TEACHER, CONFIGS[args.detector][TEACHER], teacher_dir(args), overrides, needs=needs)


def pseudo_label_job(args: argparse.Namespace) -> Job:
    arguments = ["pseudo-label", "--teacher", str(teacher_dir(args)), "--score-threshold", str(args.score_threshold),
                 "--out", str(pseudo_labels(args))]
    # Its own folder for job.json and the log, beside the labels in the teacher's folder.
    return command_job(PSEUDO_LABELS, msadkit_command(*arguments), teacher_dir(args) / "pseudo_label_job",
                       outputs=[pseudo_labels(args)], needs=[TEACHER], log_name="pseudo_label.log")


def student_job(args: argparse.Namespace, method: str, seed: int, needs: Sequence[str] = ()) -> Job:
    comparison = [f"distill.teacher={teacher_dir(args)}"] if method != "baseline" else []
    comparison += [f"data.pseudo_labels_json={pseudo_labels(args)}"] if method == "sad" else []
    overrides = run_overrides(args, "student", method, seed, args.iters, comparison)
    return training_job(job_name(method, seed), CONFIGS[args.detector][method], student_dir(args, method, seed),
                        overrides, needs=needs)


def plan(args: argparse.Namespace) -> list[Job]:
    """Every job in launch order: the missing pretrained checkpoints and the teacher (the critical
    path), the baselines (no teacher: they fill the other slot meanwhile), the pseudo-labels, the rest."""
    finished_teacher = [TEACHER] if read_eval(teacher_dir(args)) else []  # needs no pretraining any more
    pretraining = missing_pretrainings(args.pretrained, WIDTHS, args.out, order=PRETRAIN_ORDER,
                                       not_needed=finished_teacher)
    pretrain = {role: [pretraining[role].name] if role in pretraining else [] for role in WIDTHS}
    jobs = [*pretraining.values(), teacher_job(args, pretrain[TEACHER])]
    jobs += [student_job(args, "baseline", s, pretrain["student"]) for s in args.seeds if "baseline" in args.methods]
    if "sad" in args.methods:
        jobs.append(pseudo_label_job(args))
    for needs, methods in (([TEACHER], ("adl", "gid", "gid_msad")), ([PSEUDO_LABELS], ("sad",))):
        jobs += [student_job(args, m, s, needs + pretrain["student"]) for s in args.seeds for m in args.methods
                 if m in methods]
    return jobs


def paired_gain(baseline: dict[int, float], method: dict[int, float]) -> tuple[list[float], str]:
    """Per-seed AP differences ``method - baseline`` (seeds both have) and the target verdict.

    PASS when their mean is >= ``TARGET_GAIN`` and >= ``TARGET_STDS`` x their sample std (n-1);
    one seed has no std, so only the gain is checked and the verdict says so.
    """
    diffs = [method[s] - baseline[s] for s in sorted(method) if s in baseline]
    if not diffs:
        return diffs, ""
    gain = statistics.mean(diffs)
    if len(diffs) == 1:
        return diffs, f"gain {'>=' if gain >= TARGET_GAIN else '<'} {TARGET_GAIN:g} (1 seed, no std)"
    passed = gain >= TARGET_GAIN and gain >= TARGET_STDS * statistics.stdev(diffs)
    return diffs, "PASS" if passed else "MISSED"


def format_table(args: argparse.Namespace) -> str:
    """The AP table of the finished runs, a line of AP per seed and how the gain and target read."""
    tuning = args.tuning_seed is not None
    lines = tuning_banner(args) + [markdown_table(["model", "seeds", *METRICS, "AP gain over baseline", "target"], [])]
    teacher = read_eval(teacher_dir(args))
    if teacher:  # one run: its values alone ("n/a" for NaN)
        lines.append("| teacher (width 0.5, seed 0) | 1 | " + " | ".join(metric_cells({0: teacher}, METRICS)) + " | | |")
    baseline: dict[int, float] = {}
    per_seed = []
    for method, rows in finished_runs(tuning_root(args), args.methods, args.seeds).items():
        cells = metric_cells(rows, METRICS)
        gain = verdict = ""
        if method == "baseline":
            baseline = {s: row["AP"] for s, row in rows.items()}
        else:
            # Paired by seed: the same seed gives the same student initialisation and data order.
            diffs, verdict = paired_gain(baseline, {s: row["AP"] for s, row in rows.items()})
            gain = mean_std(diffs, signed=True) if diffs else ""
        seeds = f"{len(rows)}" + (" (tuning)" if tuning else "")
        lines.append(f"| {LABELS[method]} | {seeds} | " + " | ".join(cells) + f" | {gain} | {verdict} |")
        per_seed.append(f"{LABELS[method]} " + " / ".join(f"{rows[s]['AP']:.1f}" for s in sorted(rows)))
    lines += [
        "",
        f"AP per seed {' / '.join(str(s) for s in args.seeds)}: " + "; ".join(per_seed) + ".",
        "Gain: mean ± sample standard deviation (n-1) over seeds of the per-seed paired AP difference (method - "
        f"baseline, same seed). Target: PASS when gain >= {TARGET_GAIN:g} AP and gain >= {TARGET_STDS:g} x that std, "
        "else MISSED.",
    ]
    return "\n".join(lines)


def settings_line(args: argparse.Namespace) -> str:
    weights = pretrained_per_role(args.pretrained, WIDTHS)
    start = (
        "random initialisation" if weights["student"] is None
        # File names only: the cache folder is a detail of the machine, not of the experiment.
        else f"pretrained backbones (students {Path(weights['student']).name}, teacher {Path(weights[TEACHER]).name})"
    )
    seeds = f"tuning seed {args.tuning_seed}" if args.tuning_seed is not None else f"seeds {args.seeds}"
    return (
        f"{args.detector}, {args.image_size} px synthetic images ({args.num_val} val, {args.num_unlabeled} unlabeled), "
        f"students {args.iters} iterations, teacher {args.teacher_iters}, LR {args.lr:g}, {start}, {seeds}, "
        f"pseudo-label threshold {args.score_threshold}, {args.jobs} runs at a time with {args.threads} thread(s) each"
        + (f", overrides {args.overrides}" if args.overrides else "")
        + (f", per-method overrides {args.set}" if args.set else "")
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = sweep_parser(__doc__, out="runs/adl_gid_effectiveness", seeds_help="reported trainer.seed values of the students")
    add_tuning_seed_argument(parser, DEFAULT_TUNING_SEED)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher run folder; None: <out>/teacher")
    # FCOS: a freshly initialised RetinaNet spends ~150 demo iterations on the focal-loss plateau (0.1-0.4 AP
    # after 200 iterations at 128 px against 1.9 for FCOS), which leaves nothing to compare in a CPU-sized run.
    parser.add_argument("--detector", choices=list(CONFIGS), default="fcos", help="family of demo configs")
    parser.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS), help="students to train")
    parser.add_argument(
        "--pretrained", nargs="+", default=["auto"], metavar="WEIGHTS",
        help="backbone start: auto = the cached `msadkit pretrain` checkpoints of widths 0.25 (students) and "
        "0.5 (teacher), made first if missing; none = random; or the students' file [and the teacher's]",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
        help="config override for one method's runs only (teacher, baseline, adl, sad, gid, gid_msad), e.g. "
        "'adl:distill.losses=[{type: adl, weight: 3.0}]'; repeat it, and give sad its own (it does not inherit adl's)",
    )
    parser.add_argument("--iters", type=int, default=300, help="iterations of every student run")
    parser.add_argument("--teacher-iters", type=int, default=600, help="iterations of the teacher run")
    parser.add_argument("--image-size", type=int, default=128, help="side of the synthetic images")
    parser.add_argument("--num-val", type=int, default=128, help="validation images")
    parser.add_argument("--num-unlabeled", type=int, default=256, help="unlabeled images for the pseudo-labels")
    parser.add_argument("--score-threshold", type=float, default=0.4, help="pseudo-label score threshold")
    args = parser.parse_args(argv)
    check_positive(parser, args, ("iters", "teacher_iters", "jobs", "threads"))
    apply_tuning_seed(parser, args)
    choice = args.pretrained
    if len(choice) > 2 or (len(choice) == 2 and {"auto", "none"} & set(choice)):
        parser.error(f"--pretrained takes auto, none, or one or two checkpoint files, got {' '.join(choice)} "
                     "(config overrides go before the options, or after --)")
    for path in [] if choice in (["auto"], ["none"]) else choice:
        if not Path(path).is_file():
            parser.error(f"--pretrained: no such checkpoint file: {path}")
    check_method_overrides(parser, args, (TEACHER, *LABELS))
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    groups = {name: [name] for name in (pretrain_job_name(WIDTHS[role]) for role in PRETRAIN_ORDER)}
    groups |= {method: [job_name(method, s) for s in args.seeds] for method in args.methods}
    return run_sweep(
        args, root=tuning_root(args), prepare=lambda: settings_line(args), plan=lambda: plan(args), groups=groups,
        table=lambda: format_table(args), heading=TUNING_HEADING if args.tuning_seed is not None else HEADING,
        unit="jobs",
    )


if __name__ == "__main__":
    sys.exit(main())
