"""ADL, SAD and GID on the synthetic dataset: does distillation beat the baseline student?

Trains, from the packaged demo configs of one detector family (``--detector``, FCOS by default):

- the teacher (``gid/fcos_teacher_demo``: slimmable R-50 width 0.5, longer schedule), once;
- its pseudo-labels on the synthetic ``unlabeled`` split (``msadkit pseudo-label``);
- for every ``trainer.seed``, the width-0.25 student as baseline (``adl/fcos_student_demo``), with
  ADL (``adl/fcos_adl_demo``), with ADL on labeled + pseudo-labeled images (``adl/fcos_sad_demo``),
  with GID (``gid/fcos_gid_demo``) and with GID + MSAD features (``gid/fcos_gid_msad_demo``),

through ``msadkit.jobs``, ``--jobs`` single-threaded runs at a time. Every backbone starts from the
``msadkit pretrain`` checkpoint of its width (``--pretrained auto``: 0.25 for the students, 0.5 for
the teacher, made once in the msadkit cache by the first jobs), at LR ``--lr`` for all runs. A
finished run is reused only when its recorded config (``job.json``) equals the one asked for; one
trained with other settings stops the sweep with an error naming the differing keys.

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
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import mean_std
from benchmarks.effectiveness import (
    add_sweep_arguments,
    check_positive,
    print_environment,
    read_eval,
    report_failures,
    results_body,
    run_plan,
    write_results,
)
from msadkit.errors import MsadkitError
from msadkit.jobs import Job, command_job, msadkit_command, training_job

HEADING = "## ADL and GID on the synthetic dataset"
TUNING_HEADING = HEADING + ": tuning runs"
TEACHER = "teacher"
PSEUDO_LABELS = "pseudo-labels"
DEFAULT_TUNING_SEED = 100
WIDTHS = {TEACHER: 0.5, "student": 0.25}  # slimmable widths of the teacher's and the students' backbones
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


def students_root(args: argparse.Namespace) -> Path:
    """Folder of the student runs: ``<out>/tuning`` for the tuning seed, else ``<out>``."""
    return args.out / "tuning" if args.tuning_seed is not None else args.out


def teacher_dir(args: argparse.Namespace) -> Path:
    return args.teacher if args.teacher is not None else args.out / TEACHER


def student_dir(args: argparse.Namespace, method: str, seed: int) -> Path:
    return students_root(args) / f"{method}_s{seed}"


def pseudo_labels(args: argparse.Namespace) -> Path:
    return teacher_dir(args) / "pseudo_labels.json"


def pretrained_weights(args: argparse.Namespace) -> dict[str, Path | None]:
    """``{"teacher": path, "student": path}`` of the backbone checkpoints (None: random init).

    ``auto`` names the cached ``msadkit pretrain`` file of each width (made by the sweep if missing);
    one path is the students' checkpoint (the teacher's stays automatic); two are students', teacher's.
    """
    if args.pretrained == ["none"]:
        return {TEACHER: None, "student": None}
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path

    auto = {role: cached_pretrained_path(PretrainSettings(width=width)) for role, width in WIDTHS.items()}
    if args.pretrained == ["auto"]:
        return auto
    teacher = Path(args.pretrained[1]) if len(args.pretrained) > 1 else auto[TEACHER]
    return {"student": Path(args.pretrained[0]), TEACHER: teacher}


def automatic_roles(args: argparse.Namespace) -> list[str]:
    """The roles whose checkpoint is the cached ``msadkit pretrain`` file (the sweep makes it if missing)."""
    if args.pretrained == ["auto"]:
        return [TEACHER, "student"]
    return [TEACHER] if len(args.pretrained) == 1 and args.pretrained != ["none"] else []


def method_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """The ``--set METHOD:KEY=VALUE`` overrides of one method (or of the teacher)."""
    return [item.split(":", 1)[1] for item in args.set if item.split(":", 1)[0] == method]


def schedule(iters: int) -> list[str]:
    # The demo schedule's shape: LR steps at 80 % and 93 % of training, warm-up over the first 1/6.
    return [
        f"solver.max_iter={iters}",
        f"solver.steps=[{int(iters * 0.8)}, {int(iters * 0.93)}]",
        f"solver.warmup_iters={max(1, iters // 6)}",
        f"trainer.checkpoint_period={iters}",
    ]


def start_overrides(args: argparse.Namespace, role: str) -> list[str]:
    """The backbone's pretrained checkpoint (if any) and the learning rate of ``role``'s runs."""
    weights = pretrained_weights(args)[role]
    return [*([f"model.backbone.weights={weights}"] if weights is not None else []), f"solver.base_lr={args.lr:g}"]


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


def teacher_job(args: argparse.Namespace, needs: Sequence[str] = ()) -> Job:
    overrides = ["trainer.seed=0", *schedule(args.teacher_iters), *start_overrides(args, TEACHER),
                 *data_overrides(args), *args.overrides, *method_overrides(args, TEACHER)]
    return training_job(TEACHER, CONFIGS[args.detector][TEACHER], teacher_dir(args), overrides, needs=needs)


def pseudo_label_job(args: argparse.Namespace) -> Job:
    arguments = ["pseudo-label", "--teacher", str(teacher_dir(args)), "--score-threshold", str(args.score_threshold),
                 "--out", str(pseudo_labels(args))]
    # Its own folder for job.json and the log, beside the labels in the teacher's folder.
    return command_job(PSEUDO_LABELS, msadkit_command(*arguments), teacher_dir(args) / "pseudo_label_job",
                       outputs=[pseudo_labels(args)], needs=[TEACHER], log_name="pseudo_label.log")


def student_job(args: argparse.Namespace, method: str, seed: int, needs: Sequence[str] = ()) -> Job:
    overrides = [f"trainer.seed={seed}", *schedule(args.iters), *start_overrides(args, "student"),
                 *data_overrides(args)]
    if method != "baseline":
        overrides.append(f"distill.teacher={teacher_dir(args)}")
    if method == "sad":
        overrides.append(f"data.pseudo_labels_json={pseudo_labels(args)}")
    overrides += [*args.overrides, *method_overrides(args, method)]
    return training_job(f"{method} seed {seed}", CONFIGS[args.detector][method], student_dir(args, method, seed),
                        overrides, needs=needs)


def plan(args: argparse.Namespace) -> list[Job]:
    """Every job in launch order: the missing pretrained checkpoints and the teacher (the critical
    path), the baselines (no teacher: they fill the other slot meanwhile), the pseudo-labels, the rest."""
    pretrain: dict[str, list[str]] = {TEACHER: [], "student": []}
    jobs: list[Job] = []
    for role in automatic_roles(args):
        path = pretrained_weights(args)[role]
        if path.is_file() or (role == TEACHER and read_eval(teacher_dir(args))):
            continue  # made before, or no longer needed by a finished teacher
        name = f"pretrain width {WIDTHS[role]:g}"
        # `msadkit pretrain`'s defaults are PretrainSettings(), so the file lands at the cached path.
        jobs.append(command_job(name, msadkit_command("pretrain", "--width", f"{WIDTHS[role]:g}"),
                                args.out / f"pretrain_w{WIDTHS[role]:g}", outputs=[path], log_name="pretrain.log"))
        pretrain[role] = [name]
    jobs += [teacher_job(args, pretrain[TEACHER])]
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
    lines = [f"**Tuning seed {args.tuning_seed}: for choosing the settings, not a reported result.**", ""]
    lines = lines if tuning else []
    lines += [
        "| model | seeds | " + " | ".join(METRICS) + " | AP gain over baseline | target |",
        "|---|---|" + "---|" * len(METRICS) + "---|---|",
    ]
    teacher = read_eval(teacher_dir(args))
    if teacher:
        cells = [f"{teacher[m]:.1f}" if teacher[m] == teacher[m] else "n/a" for m in METRICS]
        lines.append("| teacher (width 0.5, seed 0) | 1 | " + " | ".join(cells) + " | | |")
    baseline: dict[int, float] = {}
    per_seed = []
    for method in args.methods:
        rows = {s: row for s in args.seeds if (row := read_eval(student_dir(args, method, s)))}
        if not rows:
            continue
        cells = [mean_std([row[m] for row in rows.values()]) for m in METRICS]
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
    weights = pretrained_weights(args)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_sweep_arguments(parser, out="runs/adl_gid_effectiveness",
                        seeds_help="reported trainer.seed values of the students")
    parser.add_argument("--tuning-seed", type=int, nargs="?", const=DEFAULT_TUNING_SEED, default=None,
                        help=f"train only this student seed (alone: {DEFAULT_TUNING_SEED}) into <out>/tuning, "
                        "to choose settings")
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
    if args.tuning_seed is not None:
        if args.tuning_seed in args.seeds:
            parser.error(f"--tuning-seed {args.tuning_seed} is one of the reported --seeds {args.seeds}")
        args.seeds = [args.tuning_seed]
    choice = args.pretrained
    if len(choice) > 2 or (len(choice) == 2 and {"auto", "none"} & set(choice)):
        parser.error(f"--pretrained takes auto, none, or one or two checkpoint files, got {' '.join(choice)} "
                     "(config overrides go before the options, or after --)")
    for path in [] if choice in (["auto"], ["none"]) else choice:
        if not Path(path).is_file():
            parser.error(f"--pretrained: no such checkpoint file: {path}")
    for item in args.set:
        method, _, override = item.partition(":")
        if method not in (TEACHER, *LABELS) or "=" not in override:
            parser.error(f"--set takes METHOD:KEY=VALUE with METHOD one of {TEACHER}, {', '.join(LABELS)}; "
                         f"got {item!r}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header = print_environment()
    settings, root, start = settings_line(args), students_root(args), time.time()
    print(f"runs: {root}; {settings}")
    failed: list[str] = []
    if not args.table_only:
        root.mkdir(parents=True, exist_ok=True)
        groups = {name: [name] for name in (f"pretrain width {w:g}" for w in WIDTHS.values())}
        groups |= {method: [f"{method} seed {s}" for s in args.seeds] for method in args.methods}
        try:
            failed = run_plan(plan(args), args, log_folder=root, header=header, settings=settings, start=start,
                              groups=groups)
        except MsadkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    table = format_table(args)
    print(f"\n{table}")
    heading = TUNING_HEADING if args.tuning_seed is not None else HEADING
    write_results(args.results, heading, results_body(root, table, header, "jobs"))
    return report_failures(failed)

if __name__ == "__main__":
    sys.exit(main())
