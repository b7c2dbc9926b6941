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
default, made once before the sweep), at ``solver.base_lr=--lr``, and its length is set by
``msadkit train --iterations`` (warm-up and LR steps scale with it). Each run goes in its own
process with ``--threads`` torch threads, ``--jobs`` at a time; a student starts once the teacher of
its seed is done. The script then prints the COCO AP table (mean ± sample std over seeds) and the
issue's targets, per seed and on the mean, each marked PASS or MISSED; ``--results`` writes them
into that Markdown file under ``## MSAD effectiveness on the synthetic dataset``.

Run folders that already hold an ``eval.json`` are reused (after checking their length, learning
rate and backbone match the sweep's), an interrupted run continues from its last checkpoint, and
``--table-only`` reprints the table.

    MSADKIT_CACHE=<cache folder> python benchmarks/msad_effectiveness.py --out runs/msad_effectiveness \\
        --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    append_sweep_record,
    environment_lines,
    mean_std,
    replace_markdown_section,
    sweep_log_lines,
)

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


class SweepError(Exception):
    """A finished run does not match the sweep's settings, or a setting is unusable."""


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}_s{seed}"


def iterations(args: argparse.Namespace, method: str) -> int:
    length = MODELS[method].length
    return {"teacher": args.teacher_iters, "student": args.iters, "matched": args.teacher_iters + args.iters}[length]


def overrides(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    """The config overrides of one run (its length goes to ``--iterations``, see :func:`command`)."""
    values = [
        f"output_dir={run_dir(args.out, method, seed)}",
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
        values.append(f"distill.teacher={run_dir(args.out, TEACHER, seed)}")
    if method == "msad_student" and args.kd_weight is not None:
        term = f"{{type: msad_feature, weight: {args.kd_weight}, ramp_iters: {args.ramp_iters}}}"
        values.append(f"distill.losses=[{term}]")
    if method == "msad_student_no_kd":
        values.append(NO_KD_LOSSES)
    return values


def command(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    """``msadkit train`` of one run, with the schedule scaled by ``--iterations``."""
    return [
        sys.executable, "-m", "msadkit.cli", "train", MODELS[method].config,
        "--iterations", str(iterations(args, method)), *overrides(args, method, seed),
    ]


def launch(args: argparse.Namespace, method: str, seed: int) -> subprocess.Popen:
    folder = run_dir(args.out, method, seed)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    line = command(args, method, seed)
    if (folder / "checkpoints" / "last.ckpt").is_file():
        line.append("--resume")  # an interrupted sweep continues the run
    with open(folder / "train.log", "a") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(line, stdout=log, stderr=subprocess.STDOUT, env=env)


def done(out: Path, method: str, seed: int) -> bool:
    return (run_dir(out, method, seed) / "eval.json").is_file()


def run_config(folder: Path) -> dict:
    import yaml

    path = folder / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def check_reused(args: argparse.Namespace, method: str, seed: int) -> None:
    """Refuse a finished run trained with another length, learning rate or backbone than this sweep's.

    Raises:
        SweepError: naming the run folder and the setting that differs.
    """
    folder = run_dir(args.out, method, seed)
    config = run_config(folder)
    found = {
        "iterations": config.get("solver", {}).get("max_iter"),
        "--lr": config.get("solver", {}).get("base_lr"),
        "--pretrained": config.get("model", {}).get("backbone", {}).get("weights"),
    }
    wanted = {
        "iterations": iterations(args, method),
        "--lr": args.lr,
        "--pretrained": None if args.pretrained is None else str(args.pretrained),
    }
    for key, value in wanted.items():
        if found[key] != value:
            raise SweepError(
                f"{folder} holds a finished run with {key} {found[key]!r}, this sweep asks for {value!r}; "
                "choose another --out or delete that folder"
            )


def sweep(args: argparse.Namespace) -> tuple[dict[tuple[str, int], float], list[tuple[str, int]]]:
    """Train every (model, seed) not done yet, ``args.jobs`` at a time.

    Returns:
        wall seconds per trained run, and the runs that failed or were skipped because their
        teacher failed.
    """
    keys = [(method, seed) for method in PRIORITY for seed in args.seeds]
    for key in keys:
        if done(args.out, *key):
            check_reused(args, *key)
    pending = [key for key in keys if not done(args.out, *key)]
    running: dict[tuple[str, int], tuple[subprocess.Popen, float]] = {}
    walls: dict[tuple[str, int], float] = {}
    failed: list[tuple[str, int]] = []
    while pending or running:
        for key, (process, start) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[key]
            walls[key] = time.time() - start
            ok = code == 0 and done(args.out, *key)
            status = "done" if ok else f"FAILED (exit {code}, see {run_dir(args.out, *key) / 'train.log'})"
            print(f"   {key[0]} seed {key[1]}: {status} in {walls[key] / 60:.1f} min", flush=True)
            if not ok:
                failed.append(key)
                if key[0] == TEACHER:
                    # Its students cannot start without it.
                    orphans = [p for p in pending if p[1] == key[1] and MODELS[p[0]].from_teacher]
                    for orphan in orphans:
                        pending.remove(orphan)
                        print(f"   {orphan[0]} seed {orphan[1]}: skipped, its teacher failed", flush=True)
                    failed += orphans
        launched = False
        for key in list(pending):
            if len(running) >= args.jobs:
                break
            if MODELS[key[0]].from_teacher and not done(args.out, TEACHER, key[1]):
                continue
            pending.remove(key)
            running[key] = (launch(args, *key), time.time())
            launched = True
            print(f"   started {key[0]} seed {key[1]}", flush=True)
        if not running and pending:
            raise RuntimeError(f"runs {pending} wait for runs that neither run nor finished")
        if not launched:
            time.sleep(5)
    return walls, failed


def results(out: Path, seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """model -> seed -> the run's ``eval.json``, for the finished runs."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for method in MODELS:
        finished = [s for s in seeds if done(out, method, s)]
        rows = {s: json.loads((run_dir(out, method, s) / "eval.json").read_text()) for s in finished}
        if rows:
            table[method] = rows
    return table


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def per_seed(table: dict[str, dict[int, dict[str, float]]], formula, *methods: str) -> dict[int, float]:
    """``formula(AP of methods[0], AP of methods[1], ...)`` for every seed where all have a finite AP."""
    if not all(m in table for m in methods):
        return {}
    seeds = sorted(set.intersection(*(set(table[m]) for m in methods)))
    values = {s: [table[m][s]["AP"] for m in methods] for s in seeds}
    return {s: formula(*aps) for s, aps in values.items() if all(_finite(a) for a in aps)}


class TargetCheck(NamedTuple):
    """One of the issue's targets: the per-seed values, and the verdict (None: too few seeds)."""

    text: str
    passed: bool | None

    def line(self) -> str:
        verdict = {True: "**PASS**", False: "**MISSED**", None: "**n/a**"}[self.passed]
        return f"- {self.text}: {verdict}"


def _seeds_text(values: dict[int, float]) -> str:
    """``seed 0 +4.0, seed 1 +5.0, seed 2 +3.0; mean +4.0 ± 1.0`` (one value: no spread)."""
    seeds = ", ".join(f"seed {s} {v:+.1f}" for s, v in values.items())
    return f"{seeds}; mean {mean_std(list(values.values()), signed=True)}"


def resolution_gap(table) -> TargetCheck:
    """High-res minus low-res baseline AP, paired by seed; target: its mean >= 3 AP."""
    gaps = per_seed(table, lambda high, low: high - low, "fcos_high", "fcos_low")
    if not gaps:
        return TargetCheck("resolution gap, FCOS high-res - low-res: no paired runs", None)
    mean = statistics.mean(gaps.values())
    met = sum(g >= GAP_TARGET for g in gaps.values())
    return TargetCheck(
        f"resolution gap (FCOS high-res - low-res): {_seeds_text(gaps)}; "
        f"target: mean >= {GAP_TARGET:g} AP (met by {met} of {len(gaps)} seeds alone)",
        mean >= GAP_TARGET,
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
        f"student - step-matched low-res: {_seeds_text(gained)}; high-res - step-matched low-res: "
        f"{_seeds_text(room)}; target: mean(student - matched) >= {MATCHED_SHARE:g} x mean(high - matched) = "
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
        shown = f": {_seeds_text(gains)}" if gains else ": no paired runs"
        return TargetCheck(f"{what}{shown}; target needs >= 2 seeds for a standard deviation", None)
    mean, std = statistics.mean(gains.values()), statistics.stdev(gains.values())
    return TargetCheck(
        f"{what}: {_seeds_text(gains)}; target: mean > {KD_STDS:g} x "
        f"the sample standard deviation (n - 1) of the {len(gains)} paired differences = {KD_STDS * std:.2f}",
        mean > KD_STDS * std,
    )


def target_checks(table) -> list[TargetCheck]:
    return [resolution_gap(table), student_vs_matched(table), kd_gain(table)]


def trained_iterations(out: Path, method: str, seeds: list[int]) -> str:
    """The ``solver.max_iter`` values of the finished runs, read from their ``config.yaml`` (so that
    ``--table-only`` shows what was trained, not what its own arguments say)."""
    finished = [s for s in seeds if done(out, method, s)]
    lengths = {run_config(run_dir(out, method, s)).get("solver", {}).get("max_iter") for s in finished}
    return " / ".join(str(n) for n in sorted(n for n in lengths if n is not None))


def format_table(table: dict, lengths: dict[str, str] | None = None) -> str:
    """Markdown: mean ± sample std over seeds per model, AP per seed, then the target lines.

    Args:
        table: model -> seed -> eval.json row (:func:`results`); a list of rows counts as seeds
            0, 1, ...
        lengths: model -> the iterations column (:func:`trained_iterations`).
    """
    table = {m: dict(enumerate(rows)) if isinstance(rows, list) else rows for m, rows in table.items()}
    lengths = lengths or {}
    lines = [
        "| model | iterations | seeds | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for method, rows in table.items():
        cells = [lengths.get(method, ""), str(len(rows))]
        cells += [mean_std([row[m] for row in rows.values()]) for m in METRICS]
        lines.append(f"| {MODELS[method].label} | " + " | ".join(cells) + " |")
    lines += ["", "AP per seed:"]
    for method, rows in table.items():
        lines.append(f"- {method}: " + ", ".join(f"seed {s} {row['AP']:.1f}" for s, row in rows.items()))
    lines += ["", "Targets (per seed, then the mean and sample standard deviation over seeds; verdicts on the mean):"]
    lines += [check.line() for check in target_checks(table)]
    if {"fcos_high", "fcos_low", "msad_student"} <= set(table):
        mean = {m: _mean_ap(table[m]) for m in ("fcos_high", "fcos_low", "msad_student")}
        gap, gained = mean["fcos_high"] - mean["fcos_low"], mean["msad_student"] - mean["fcos_low"]
        # With no gap (or NaN APs) there is no share to report.
        closed = f"{gained / gap:.0%}" if gap and gap == gap else "n/a"
        lines.append(f"- for comparison, student - low-res (mean AP): {gained:+.1f}; share of the gap closed: {closed}")
    return "\n".join(lines)


def _mean_ap(rows: dict[int, dict[str, float]]) -> float:
    values = [row["AP"] for row in rows.values() if _finite(row["AP"])]
    return statistics.mean(values) if values else float("nan")


def resolve_pretrained(value: str) -> tuple[Path | None, str]:
    """The backbone checkpoint of ``--pretrained`` and a sentence on where it came from.

    ``auto`` trains the default ``msadkit pretrain`` checkpoint into the cache if it is not there.

    Raises:
        SweepError: a path that is not a file.
    """
    if value == "none":
        return None, "backbone from random initialisation (--pretrained none)"
    if value != "auto":
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise SweepError(f"--pretrained {value}: no such file (give a checkpoint, 'auto' or 'none')")
        return path, f"backbone from {value}"
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_backbone, cached_pretrained_path

    cached = cached_pretrained_path(PretrainSettings()).is_file()
    start = time.time()
    # Absolute, so that the runs' config.yaml name the file whatever MSADKIT_CACHE was relative to.
    path = cached_pretrained_backbone(log=print).resolve()
    if cached:
        return path, f"backbone from the cached `msadkit pretrain` checkpoint {path.name} (made before, reused)"
    return path, f"backbone from `msadkit pretrain` (defaults), made for this sweep in {time.time() - start:.0f} s"


def results_body(out: Path, table: str, header: list[str]) -> str:
    """Machine, every invocation that trained runs of ``out`` (date, command, wall time), settings, table."""
    lines = sweep_log_lines(out, "runs")
    if not lines:
        # Runs trained elsewhere: only this invocation's facts are known.
        lines = [*(f"- {line}" for line in header), "- wall time: not recorded (no sweep log)"]
    return "\n".join([*lines, "", table])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/msad_effectiveness"), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed values")
    parser.add_argument("--teacher-iters", type=int, default=450, help="iterations of the teacher and high-res runs")
    parser.add_argument("--iters", type=int, default=450, help="iterations of the students and the low-res baseline (the demo: 450, like the teacher)")
    parser.add_argument("--lr", type=float, default=0.03, help="solver.base_lr of every run")
    parser.add_argument(
        "--pretrained", default="auto",
        help="backbone checkpoint of every run: a file, 'auto' (the cached `msadkit pretrain` default, made "
        "first if missing) or 'none' (random initialisation)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--kd-weight", type=float, default=None, help="msad_feature weight; None keeps the config's")
    parser.add_argument("--ramp-iters", type=int, default=50, help="KD ramp when --kd-weight is given")
    parser.add_argument("--results", type=Path, help="Markdown file to write the table into (with --table-only too)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("teacher_iters", "iters", "jobs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    header = environment_lines()
    for line in header:
        print(line, flush=True)
    start = time.time()  # the wall time includes a pretraining made for the sweep
    try:
        if args.table_only and args.pretrained == "auto":
            from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path

            args.pretrained = cached_pretrained_path(PretrainSettings()).resolve()
            origin = "backbone from the cached `msadkit pretrain` checkpoint"
        else:
            args.pretrained, origin = resolve_pretrained(args.pretrained)
        settings = (
            f"teacher and high-res {args.teacher_iters} iterations, students and low-res {args.iters}, step-matched "
            f"low-res {args.teacher_iters + args.iters}; LR {args.lr}; {origin}; seeds {args.seeds}; "
            f"{args.jobs} runs at a time with {args.threads} thread(s) each"
            + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
        )
        print(f"runs: {args.out}; {settings}", flush=True)
        failed: list[tuple[str, int]] = []
        if not args.table_only:
            args.out.mkdir(parents=True, exist_ok=True)
            walls, failed = sweep(args)
            for method in PRIORITY:
                times = [walls[(method, s)] for s in args.seeds if (method, s) in walls]
                if times:
                    print(f"   {method}: {statistics.mean(times) / 60:.1f} min per run (mean of {len(times)})")
            wall = (time.time() - start) / 60
            print(f"sweep wall time: {wall:.1f} min")
            if walls:
                append_sweep_record(args.out, {"header": header, "settings": settings, "wall_min": round(wall, 1),
                                               "trained": sorted(f"{m} seed {s}" for m, s in walls)})
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lengths = {method: trained_iterations(args.out, method, args.seeds) for method in MODELS}
    table = format_table(results(args.out, args.seeds), lengths)
    print()
    print(table)
    if args.results is not None:
        replace_markdown_section(args.results, HEADING, results_body(args.out, table, header))
        print(f"\nwritten to {args.results}")
    if failed:
        print(f"\n{len(failed)} run(s) failed or were skipped: " + ", ".join(f"{m} seed {s}" for m, s in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
