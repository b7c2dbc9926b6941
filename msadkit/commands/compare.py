"""`msadkit compare`: distillation methods against a baseline, paired by seed, with intervals.

Trains, per track and seed, the teacher(s), the baseline, the step-matched control and every
method's student from the same initialisation and data order (see :mod:`msadkit.compare`), reuses
finished runs, and writes ``<out>/<track>/comparison.{md,tex,csv,png}``. ``--tune`` first chooses
each method's weight on the tuning seed and records it in ``<out>/<track>/tuning.json``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare distillation methods against a baseline, paired by seed (table and forest plot)",
        description="Train the shared teacher(s) once per seed, the baseline, the step-matched control (teacher + "
        "student iterations) and each method's student from the same initialisation and data order per seed, "
        "reuse finished runs, and write one table (Markdown, LaTeX, CSV) and one figure per track: each method's "
        "paired AP difference to the baseline with its 95 % t-interval and Holm-corrected p-value, AP per seed, "
        "APs/APm/APl, each run's bootstrap evaluation SE and whether it reached its plateau.",
    )
    p.add_argument("--track", nargs="+", default=["both"], metavar="TRACK",
                   help="same-resolution (width 0.5 -> 0.25 teacher/student), cross-resolution (high-res "
                   "teachers -> low-res student), or both (default)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="distillation terms joined by '+' (gid, gid+msad_feature, fitnet, ...); on the "
                   "cross-resolution track METHOD@msad learns from the MSAD C-FF teacher (default: every term of "
                   "the track; --quick: two)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="reported trainer.seed values, at least 2 (default 0 1 2 3 4; --quick: 0 1)")
    p.add_argument("--tuning-seed", type=int, default=100,
                   help="the seed weights are tuned on, never reported (default 100)")
    p.add_argument("--tune", action="store_true",
                   help="train every method at 1x, 0.25x and 4x its official weight on the tuning seed and record the "
                   "best in <out>/<track>/tuning.json (the reported runs then use it); trains no reported run")
    p.add_argument("--out", default="runs/compare", help="comparison folder (default runs/compare)")
    p.add_argument("--quick", action="store_true",
                   help="tiny images, datasets and iterations, two methods, seeds 0 1: checks the whole path in "
                   "minutes")
    p.add_argument("--iterations", type=int, default=None, help="iterations of every student and baseline")
    p.add_argument("--teacher-iterations", type=int, default=None, help="iterations of every teacher")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--bootstrap-samples", type=int, default=200,
                   help="resamples of the validation images for each run's evaluation SE (default 200)")
    p.add_argument("--table-only", action="store_true", help="train nothing: the table and figure of the finished runs")
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. trainer.accelerator=gpu")


def run(args: argparse.Namespace) -> int:
    import sys

    from msadkit.compare import make_request, run_comparison, run_tuning

    request = make_request(
        args.track, methods=args.methods, seeds=args.seeds, tuning_seed=args.tuning_seed, out=args.out,
        quick=args.quick, iterations=args.iterations, teacher_iterations=args.teacher_iterations,
        overrides=args.overrides, jobs=args.jobs, threads=args.threads, bootstrap_samples=args.bootstrap_samples,
    )
    for track in request.tracks:
        budget = request.budgets[track.name]
        methods = " ".join(method.name for method in request.methods[track.name])
        print(f"{track.name}: {methods}; seeds {' '.join(map(str, request.seeds))}; {budget.image_size} px, "
              f"students {budget.iterations} it, teachers {budget.teacher_iterations} it, "
              f"control {budget.control_iterations} it", flush=True)
    if args.tune:
        paths, failed = run_tuning(request)
        for name, path in paths.items():
            print(f"{name}: tuning on seed {request.tuning_seed} recorded in {path}")
    else:
        outcome = run_comparison(request, train=not args.table_only)
        failed = outcome.failed
        for name, files in outcome.files.items():
            print(f"\n{files['markdown'].read_text()}")
            print(f"{name}: " + ", ".join(str(path) for path in files.values()))
    if failed:
        lines = [f"  {o.job.name}: {o.error} (log {o.job.log_path})" for o in failed]
        print(f"{len(failed)} run(s) did not finish:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    return 0
