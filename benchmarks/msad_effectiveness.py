"""MSAD on the synthetic dataset: high-res and low-res FCOS baselines, teacher and student.

Trains the four packaged demo configs (``msad/fcos_high_demo``, ``msad/fcos_low_demo``,
``msad/msad_teacher_demo``, ``msad/msad_student_demo``) for several ``trainer.seed`` values on one
fixed synthetic dataset, each run in its own single-threaded process (``--jobs`` at a time; a
student starts once the teacher of its seed is done), then prints the COCO AP table (mean ± std over
seeds) and the share of the low-res -> high-res AP gap the student closes.

Run folders that already hold an ``eval.json`` are reused, so an interrupted sweep continues where
it stopped and ``--table-only`` reprints the table.

    MSADKIT_CACHE=<cache folder> python benchmarks/msad_effectiveness.py --out runs/msad_effectiveness
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mean_std  # noqa: E402

METHODS = {
    # name: (packaged config, the run it needs first)
    "fcos_high": ("msad/fcos_high_demo", None),
    "fcos_low": ("msad/fcos_low_demo", None),
    "msad_teacher": ("msad/msad_teacher_demo", None),
    "msad_student": ("msad/msad_student_demo", "msad_teacher"),
}
LABELS = {
    "fcos_high": "FCOS high-res (256 px)",
    "fcos_low": "FCOS low-res (128 px)",
    "msad_teacher": "MSAD teacher (256 + 128 px)",
    "msad_student": "MSAD student (128 px)",
}
METRICS = ("AP", "APs", "APm", "APl")


def environment_lines() -> list[str]:
    """Date, machine, load and versions, for the results file."""
    import platform

    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = "%.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else "n/a"
    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, load average at start {load}",
        f"python {platform.python_version()}, torch {torch.__version__}",
        "command: python " + " ".join(sys.argv),
    ]


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}_s{seed}"


def overrides(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    iters = args.iters
    values = [
        f"output_dir={run_dir(args.out, method, seed)}",
        f"trainer.seed={seed}",
        f"solver.max_iter={iters}",
        # The base schedule's LR steps at 80 % and 93 % of training, warm-up over the first 1/6.
        f"solver.steps=[{int(iters * 0.8)}, {int(iters * 0.93)}]",
        f"solver.warmup_iters={max(1, iters // 6)}",
        f"trainer.checkpoint_period={iters}",
        "trainer.progress_bar=false",
    ]
    if method == "msad_student":
        values.append(f"distill.teacher={run_dir(args.out, 'msad_teacher', seed)}")
        if args.kd_weight is not None:
            term = f"{{type: msad_feature, weight: {args.kd_weight}, ramp_iters: {args.ramp_iters}}}"
            values.append(f"distill.losses=[{term}]")
    return values + list(args.overrides)


def launch(args: argparse.Namespace, method: str, seed: int) -> subprocess.Popen:
    folder = run_dir(args.out, method, seed)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, "-m", "msadkit.cli", "train", METHODS[method][0], *overrides(args, method, seed)]
    if (folder / "checkpoints" / "last.ckpt").is_file():
        command.append("--resume")  # an interrupted sweep continues the run
    log = open(folder / "train.log", "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def done(out: Path, method: str, seed: int) -> bool:
    return (run_dir(out, method, seed) / "eval.json").is_file()


def sweep(args: argparse.Namespace) -> dict[tuple[str, int], float]:
    """Train every (method, seed) not done yet, ``args.jobs`` at a time; wall seconds per run."""
    pending = [(m, s) for s in args.seeds for m in METHODS if not done(args.out, m, s)]
    running: dict[tuple[str, int], tuple[subprocess.Popen, float]] = {}
    walls: dict[tuple[str, int], float] = {}
    while pending or running:
        for key, (process, start) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[key]
            walls[key] = time.time() - start
            status = "done" if code == 0 and done(args.out, *key) else f"FAILED (exit {code}, see train.log)"
            print(f"   {key[0]} seed {key[1]}: {status} in {walls[key] / 60:.1f} min", flush=True)
            if status != "done":
                # A student cannot start without its teacher.
                pending = [p for p in pending if not (p[1] == key[1] and METHODS[p[0]][1] == key[0])]
        launched = False
        for key in list(pending):
            if len(running) >= args.jobs:
                break
            needs = METHODS[key[0]][1]
            if needs and not done(args.out, needs, key[1]):
                continue
            pending.remove(key)
            running[key] = (launch(args, *key), time.time())
            launched = True
            print(f"   started {key[0]} seed {key[1]}", flush=True)
        if not running and pending:
            raise RuntimeError(f"runs {pending} wait for runs that failed")
        if not launched:
            time.sleep(5)
    return walls


def results(out: Path, seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    table: dict[str, list[dict[str, float]]] = {}
    for method in METHODS:
        rows = [json.loads((run_dir(out, method, s) / "eval.json").read_text()) for s in seeds if done(out, method, s)]
        if rows:
            table[method] = rows
    return table


def format_table(table: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| model | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for method, rows in table.items():
        cells = [mean_std([row[m] for row in rows]) for m in METRICS]
        lines.append(f"| {LABELS[method]} | {len(rows)} | " + " | ".join(cells) + " |")
    if {"fcos_high", "fcos_low", "msad_student"} <= set(table):
        mean = {m: statistics.mean(r["AP"] for r in table[m]) for m in ("fcos_high", "fcos_low", "msad_student")}
        gap = mean["fcos_high"] - mean["fcos_low"]
        # With no gap (or NaN APs) there is no share to report.
        closed = f"{(mean['msad_student'] - mean['fcos_low']) / gap:.0%}" if gap and gap == gap else "n/a"
        lines.append("")
        lines.append(
            f"AP gap high-res - low-res: {gap:.1f}; student - low-res: "
            f"{mean['msad_student'] - mean['fcos_low']:+.1f}; share of the gap closed: {closed}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/msad_effectiveness"), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed values")
    parser.add_argument("--iters", type=int, default=300, help="iterations of every run")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--kd-weight", type=float, default=None, help="msad_feature weight; None keeps the config's")
    parser.add_argument("--ramp-iters", type=int, default=50, help="KD ramp when --kd-weight is given")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    args = parser.parse_args()

    for line in environment_lines():
        print(line)
    print(
        f"runs: {args.out}, seeds {args.seeds}, {args.iters} iterations, {args.jobs} at a time, "
        f"{args.threads} thread(s) each"
    )
    start = time.time()
    if not args.table_only:
        walls = sweep(args)
        for method in METHODS:
            times = [walls[(method, s)] for s in args.seeds if (method, s) in walls]
            if times:
                print(f"   {method}: {statistics.mean(times) / 60:.1f} min per run (mean of {len(times)})")
        print(f"sweep wall time: {(time.time() - start) / 60:.1f} min")
    print()
    print(format_table(results(args.out, args.seeds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
