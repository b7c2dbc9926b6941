"""MSAD on the synthetic dataset: the resolution gap, the step-matched control and the KD ablation.

Trains, for every ``trainer.seed`` of ``--seeds`` on one fixed synthetic dataset, from the packaged
MSAD demo configs:

- ``fcos_high``: the high-resolution FCOS baseline (``msad/fcos_high_demo``), as long as the teacher;
- ``fcos_low``: the low-resolution baseline (``msad/fcos_low_demo``), as long as the student;
- ``fcos_low_matched``: the step-matched control, the low-resolution baseline trained for teacher +
  student iterations (what the student's optimisation adds up to), from the backbone alone;
- ``msad_teacher``: the multi-scale teacher (``msad/msad_teacher_demo``);
- ``msad_student``: the student (``msad/msad_student_demo``), initialised from its seed's teacher,
  with the ``msad_feature`` KD term;
- ``msad_student_no_kd``: the KD ablation, the same student from the same teacher with the KD
  term's weight set to 0 (``distill.losses`` may not be empty while ``distill.teacher`` is set):
  the term adds nothing to the gradients; the teacher's forward pass still runs every step, which
  costs time, not correctness.

Every run starts its backbone from ``--pretrained`` (the cached ``msadkit pretrain`` checkpoint by
default, made once before the sweep) at ``solver.base_lr=--lr``; ``msadkit train --iterations`` sets
its length (warm-up and LR steps scale with it). The runs are jobs of :mod:`benchmarks.effectiveness`
(``--jobs`` at a time, a student after its seed's teacher; how a finished run is reused, how an
interrupted one resumes). Then it prints the COCO AP table (mean ± sample std over seeds) and the
issue's targets, per seed and on the mean, marked PASS or MISSED; ``--results`` writes them under
``## MSAD effectiveness on the synthetic dataset``; ``--table-only`` reprints them.

    MSADKIT_CACHE=<cache folder> python -m benchmarks.msad_effectiveness --out runs/msad_effectiveness \\
        --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from benchmarks.common import markdown_table
from benchmarks.effectiveness import (
    TargetCheck,
    add_pretrained_argument,
    check_positive,
    finished_runs,
    job_name,
    mean_ap,
    metric_cells,
    per_seed,
    resolve_pretrained,
    run_folder,
    run_sweep,
    seeds_text,
    sweep_parser,
    trained_lengths,
)
from msadkit.jobs import Job, training_job

HEADING = "## MSAD effectiveness on the synthetic dataset"
TEACHER = "msad_teacher"
# The KD ablation keeps the student's term but at weight 0: an empty ``distill.losses`` is refused
# while ``distill.teacher`` is set, and without ``distill.teacher`` there is no teacher init.
NO_KD_LOSSES = "distill.losses=[{type: msad_feature, weight: 0.0}]"
METRICS = ("AP", "APs", "APm", "APl")
GAP_TARGET = 3.0  # AP, high-res minus low-res baseline
MATCHED_SHARE = 0.5  # of (high-res - step-matched low-res) the student must gain over the latter
KD_STDS = 2.0  # the KD gain must exceed this many sample standard deviations of its paired differences


class Model(NamedTuple):
    """One kind of run: its packaged config, table label and length (``teacher``, ``student`` or
    ``matched`` = both), and whether it starts from its seed's teacher."""

    config: str
    label: str
    length: str
    from_teacher: bool = False


MODELS = {  # in the order of the table
    "fcos_high": Model("msad/fcos_high_demo", "FCOS high-res (256 px)", "teacher"),
    "fcos_low": Model("msad/fcos_low_demo", "FCOS low-res (128 px)", "student"),
    "fcos_low_matched": Model(
        "msad/fcos_low_demo", "FCOS low-res, step-matched (teacher + student iterations)", "matched"
    ),
    TEACHER: Model("msad/msad_teacher_demo", "MSAD teacher (256 + 128 px, fused branch)", "teacher"),
    "msad_student": Model("msad/msad_student_demo", "MSAD student (128 px)", "student", from_teacher=True),
    "msad_student_no_kd": Model(
        "msad/msad_student_demo", "MSAD student without KD (teacher init, KD weight 0)", "student", from_teacher=True
    ),
}
# Launch order: the teachers first (the longest runs, and the students wait for them), then the
# longest of the rest, so that the two job slots end close together.
PRIORITY = (TEACHER, "fcos_high", "fcos_low_matched", "msad_student", "msad_student_no_kd", "fcos_low")


def iterations(args: argparse.Namespace, method: str) -> int:
    length = MODELS[method].length
    return {"teacher": args.teacher_iters, "student": args.iters, "matched": args.teacher_iters + args.iters}[length]


def overrides(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    """The config overrides of one run (its folder and length are the job's, see :func:`plan`)."""
    values = [
        f"trainer.seed={seed}",
        f"solver.base_lr={args.lr}",
        # Only the final checkpoint: the runs are evaluated once, at the end.
        f"trainer.checkpoint_period={iterations(args, method)}",
        "trainer.progress_bar=false",
    ]
    if args.pretrained is not None:
        # A student from its teacher gets it too (then overwritten by the teacher's weights): every
        # run of the table has the same config apart from what the comparison is about.
        values.append(f"model.backbone.weights={args.pretrained}")
    values += list(args.overrides)
    # What defines the comparison comes last, so no override for every run can change it.
    if MODELS[method].from_teacher:
        values.append(f"distill.teacher={run_folder(args.out, TEACHER, seed)}")
    if method == "msad_student" and args.kd_weight is not None:
        term = f"{{type: msad_feature, weight: {args.kd_weight}, ramp_iters: {args.ramp_iters}}}"
        values.append(f"distill.losses=[{term}]")
    if method == "msad_student_no_kd":
        values.append(NO_KD_LOSSES)
    return values


def plan(args: argparse.Namespace) -> list[Job]:
    """One ``msadkit train`` job per (model, seed), in launch order; a student needs its seed's teacher."""
    return [
        training_job(
            job_name(method, seed), MODELS[method].config, run_folder(args.out, method, seed),
            overrides(args, method, seed), iterations=iterations(args, method),
            needs=[job_name(TEACHER, seed)] if MODELS[method].from_teacher else [],
        )
        for method in PRIORITY for seed in args.seeds
    ]


def results(out: Path, seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """model -> seed -> the run's ``eval.json``, for the finished runs."""
    return finished_runs(out, list(MODELS), seeds)


def resolution_gap(table) -> TargetCheck:
    """High-res minus low-res baseline AP, paired by seed; target: its mean >= 3 AP."""
    gaps = per_seed(table, lambda high, low: high - low, "fcos_high", "fcos_low")
    if not gaps:
        return TargetCheck("resolution gap, FCOS high-res - low-res: no paired runs", None)
    met = sum(g >= GAP_TARGET for g in gaps.values())
    return TargetCheck(
        f"resolution gap (FCOS high-res - low-res): {seeds_text(gaps)}; "
        f"target: mean >= {GAP_TARGET:g} AP (met by {met} of {len(gaps)} seeds alone)",
        statistics.mean(gaps.values()) >= GAP_TARGET,
    )


def student_vs_matched(table) -> TargetCheck:
    """Student minus step-matched low-res against half of high-res minus step-matched low-res.

    Target: mean(student - matched) >= 0.5 x mean(high - matched). Both sides are means of per-seed
    differences, so this is the same as the mean of the per-seed margins being >= 0.
    """
    methods = ("msad_student", "fcos_low_matched", "fcos_high")
    gained = per_seed(table, lambda student, matched, high: student - matched, *methods)
    room = per_seed(table, lambda student, matched, high: high - matched, *methods)
    if not gained:
        return TargetCheck("student against the step-matched low-res baseline: no paired runs", None)
    mean_gained, mean_room = statistics.mean(gained.values()), statistics.mean(room.values())
    met = sum(gained[s] >= MATCHED_SHARE * room[s] for s in gained)
    text = (
        f"student - step-matched low-res: {seeds_text(gained)}; high-res - step-matched low-res: "
        f"{seeds_text(room)}; target: mean(student - matched) >= {MATCHED_SHARE:g} x mean(high - matched) = "
        f"{MATCHED_SHARE * mean_room:+.2f} (met by {met} of {len(gained)} seeds alone)"
    )
    if mean_room <= 0:
        text += (
            "; the step-matched low-res baseline is not below the high-res one, so this target only asks the "
            "student not to fall far below it"
        )
    return TargetCheck(text, mean_gained >= MATCHED_SHARE * mean_room)


def kd_gain(table) -> TargetCheck:
    """Student minus the no-KD ablation, paired by seed; target: mean > 2 x their sample std."""
    gains = per_seed(table, lambda student, ablation: student - ablation, "msad_student", "msad_student_no_kd")
    what = "KD gain (student - student without KD, paired by seed)"
    if len(gains) < 2:
        shown = f": {seeds_text(gains)}" if gains else ": no paired runs"
        return TargetCheck(f"{what}{shown}; target needs >= 2 seeds for a standard deviation", None)
    mean, std = statistics.mean(gains.values()), statistics.stdev(gains.values())
    return TargetCheck(
        f"{what}: {seeds_text(gains)}; target: mean > {KD_STDS:g} x "
        f"the sample standard deviation (n - 1) of the {len(gains)} paired differences = {KD_STDS * std:.2f}",
        mean > KD_STDS * std,
    )


def target_checks(table) -> list[TargetCheck]:
    return [resolution_gap(table), student_vs_matched(table), kd_gain(table)]


def format_table(table: dict, lengths: dict[str, str] | None = None) -> str:
    """Markdown: mean ± sample std over seeds per model, AP per seed, then the target lines.

    Args:
        table: model -> seed -> eval.json row (:func:`results`); a list of rows counts as seeds 0, 1, ...
        lengths: model -> the iterations column (:func:`trained_lengths`).
    """
    table = {m: dict(enumerate(rows)) if isinstance(rows, list) else rows for m, rows in table.items()}
    lengths = lengths or {}
    cells = [[MODELS[m].label, lengths.get(m, ""), len(rows), *metric_cells(rows, METRICS)] for m, rows in table.items()]
    lines = [markdown_table(["model", "iterations", "seeds", *METRICS], cells), "", "AP per seed:"]
    for method, rows in table.items():
        lines.append(f"- {method}: " + ", ".join(f"seed {s} {row['AP']:.1f}" for s, row in rows.items()))
    lines += ["", "Targets (per seed, then the mean and sample standard deviation over seeds; verdicts on the mean):"]
    lines += [check.line() for check in target_checks(table)]
    if {"fcos_high", "fcos_low", "msad_student"} <= set(table):
        mean = {m: mean_ap(table[m]) for m in ("fcos_high", "fcos_low", "msad_student")}
        gap, gained = mean["fcos_high"] - mean["fcos_low"], mean["msad_student"] - mean["fcos_low"]
        # With no gap (or NaN APs) there is no share to report.
        closed = f"{gained / gap:.0%}" if gap and gap == gap else "n/a"
        lines.append(f"- for comparison, student - low-res (mean AP): {gained:+.1f}; share of the gap closed: {closed}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = sweep_parser(__doc__, out="runs/msad_effectiveness")
    parser.add_argument("--teacher-iters", type=int, default=450, help="iterations of the teacher and high-res runs")
    parser.add_argument("--iters", type=int, default=450,
                        help="iterations of the students and the low-res baseline (the demo: 450, like the teacher)")
    add_pretrained_argument(parser)
    parser.add_argument("--kd-weight", type=float, default=None, help="msad_feature weight; None keeps the config's")
    parser.add_argument("--ramp-iters", type=int, default=50, help="KD ramp when --kd-weight is given")
    return parser


def prepare(args: argparse.Namespace) -> str:
    """Resolve ``--pretrained`` into ``args.pretrained`` (training the default checkpoint when it is
    missing) and return the settings line of the sweep log."""
    args.pretrained, origin = resolve_pretrained(args.pretrained, args.table_only)
    return (
        f"teacher and high-res {args.teacher_iters} iterations, students and low-res {args.iters}, step-matched "
        f"low-res {args.teacher_iters + args.iters}; LR {args.lr}; {origin}; seeds {args.seeds}; "
        f"{args.jobs} runs at a time with {args.threads} thread(s) each"
        + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_positive(parser, args, ("teacher_iters", "iters", "jobs", "threads"))

    def table() -> str:
        lengths = {method: trained_lengths([run_folder(args.out, method, s) for s in args.seeds]) for method in MODELS}
        return format_table(results(args.out, args.seeds), lengths)

    return run_sweep(
        args, root=args.out, prepare=lambda: prepare(args), plan=lambda: plan(args), table=table, heading=HEADING,
        groups={method: [job_name(method, s) for s in args.seeds] for method in PRIORITY}, unit="runs",
    )


if __name__ == "__main__":
    sys.exit(main())
