"""ADL, SAD and GID on the synthetic dataset: does distillation beat the baseline student?

Trains, from the packaged demo configs of one detector family (``--detector``, FCOS by default):

- the teacher (``gid/fcos_teacher_demo``: slimmable R-50 width 0.5, longer schedule), once;
- its pseudo-labels on the synthetic ``unlabeled`` split (``msadkit pseudo-label``);
- for every ``trainer.seed``, the width-0.25 student as baseline (``adl/fcos_student_demo``), with
  ADL (``adl/fcos_adl_demo``), with ADL on labeled + pseudo-labeled images (``adl/fcos_sad_demo``),
  with GID (``gid/fcos_gid_demo``) and with GID + MSAD features (``gid/fcos_gid_msad_demo``),

FCOS is the default because a freshly initialised RetinaNet spends the first ~150 iterations of
the demo schedule on the focal-loss plateau (0.1-0.4 AP after 200 iterations at 128 px against
1.9 AP for FCOS), which leaves nothing to compare in a CPU-sized run.

each run in its own single-threaded process (``--jobs`` at a time), then prints the COCO AP table
(mean ± std over seeds, and each method's gain over the baseline) and, with ``--results``, writes
it into that Markdown file under the heading ``## ADL and GID on the synthetic dataset``
(replacing an older version of the section).

Run folders that already hold an ``eval.json`` are reused, so an interrupted sweep continues where
it stopped and ``--table-only`` reprints the table.

    MSADKIT_CACHE=/tmp/msadcache python benchmarks/adl_gid_effectiveness.py --out runs/adl_gid \\
        --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment_lines, mean_std  # noqa: E402

HEADING = "## ADL and GID on the synthetic dataset"
TEACHER = "teacher"
LABELS = {
    "baseline": "student baseline (width 0.25)",
    "adl": "+ ADL",
    "sad": "+ ADL with pseudo-labels (SAD)",
    "gid": "+ GID",
    "gid_msad": "+ GID + MSAD features",
}
# Per detector family: the teacher's packaged config, then each student's.
CONFIGS = {
    "fcos": {
        TEACHER: "gid/fcos_teacher_demo",
        "baseline": "adl/fcos_student_demo",
        "adl": "adl/fcos_adl_demo",
        "sad": "adl/fcos_sad_demo",
        "gid": "gid/fcos_gid_demo",
        "gid_msad": "gid/fcos_gid_msad_demo",
    },
    "retinanet": {
        TEACHER: "adl/retinanet_teacher_demo",
        "baseline": "adl/retinanet_student_demo",
        "adl": "adl/retinanet_adl_demo",
        "sad": "adl/retinanet_sad_demo",
        "gid": "gid/retinanet_gid_demo",
        "gid_msad": "gid/retinanet_gid_msad_demo",
    },
}
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SWEEP_LOG = "sweeps.jsonl"  # one record per invocation that trained something


def run_dir(out: Path, method: str, seed: int | None = None) -> Path:
    return out / (method if seed is None else f"{method}_s{seed}")


def pseudo_labels(out: Path) -> Path:
    return run_dir(out, TEACHER) / "pseudo_labels.json"


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


def teacher_command(args: argparse.Namespace) -> list[str]:
    overrides = [
        f"output_dir={run_dir(args.out, TEACHER)}",
        "trainer.seed=0",
        *schedule(args.teacher_iters),
        *data_overrides(args),
        *args.overrides,
    ]
    return [sys.executable, "-m", "msadkit.cli", "train", CONFIGS[args.detector][TEACHER], *overrides]


def pseudo_label_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "msadkit.cli", "pseudo-label",
        "--teacher", str(run_dir(args.out, TEACHER)),
        "--score-threshold", str(args.score_threshold),
        "--out", str(pseudo_labels(args.out)),
    ]


def student_command(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    overrides = [
        f"output_dir={run_dir(args.out, method, seed)}",
        f"trainer.seed={seed}",
        *schedule(args.iters),
        *data_overrides(args),
    ]
    if method != "baseline":
        overrides.append(f"distill.teacher={run_dir(args.out, TEACHER)}")
    if method == "sad":
        overrides.append(f"data.pseudo_labels_json={pseudo_labels(args.out)}")
    return [sys.executable, "-m", "msadkit.cli", "train", CONFIGS[args.detector][method], *overrides, *args.overrides]


def launch(command: list[str], folder: Path, threads: int) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if command[3] == "train" and (folder / "checkpoints" / "last.ckpt").is_file():
        command = [*command, "--resume"]  # an interrupted sweep continues the run
    log = open(folder / ("pseudo_label.log" if command[3] == "pseudo-label" else "train.log"), "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def done(out: Path, method: str, seed: int | None = None) -> bool:
    return (run_dir(out, method, seed) / "eval.json").is_file()


class Job:
    """One process of the sweep: what it runs, where it logs, when it is finished, what it waits for."""

    def __init__(self, name: str, command: list[str], folder: Path, finished, needs: str | None) -> None:
        self.name, self.command, self.folder, self.finished, self.needs = name, command, folder, finished, needs


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every job in launch priority order: the teacher first, baselines meanwhile, then the rest."""
    out = args.out
    teacher_dir = run_dir(out, TEACHER)
    queue = [
        Job(TEACHER, teacher_command(args), teacher_dir, lambda: done(out, TEACHER), None),
        Job("pseudo-labels", pseudo_label_command(args), teacher_dir, lambda: pseudo_labels(out).is_file(), TEACHER),
    ]
    for seed in args.seeds:
        for method in args.methods:
            needs = {"baseline": None, "sad": "pseudo-labels"}.get(method, TEACHER)
            queue.append(
                Job(
                    f"{method} seed {seed}",
                    student_command(args, method, seed),
                    run_dir(out, method, seed),
                    lambda m=method, s=seed: done(out, m, s),
                    needs,
                )
            )
    # Baselines need no teacher: they fill the other job slots while it trains.
    return sorted(queue, key=lambda job: (job.needs is not None, job.needs == "pseudo-labels"))


def sweep(args: argparse.Namespace) -> dict[str, float]:
    """Run every job not finished yet, ``args.jobs`` at a time; wall seconds per job."""
    pending = [job for job in jobs(args) if not job.finished()]
    finished = {job.name for job in jobs(args) if job.finished()}
    failed: set[str] = set()
    running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
    walls: dict[str, float] = {}
    while pending or running:
        for name, (job, process, start) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[name]
            walls[name] = time.time() - start
            ok = code == 0 and job.finished()
            (finished if ok else failed).add(name)
            status = "done" if ok else f"FAILED (exit {code}, see the log in {job.folder})"
            print(f"   {name}: {status} in {walls[name] / 60:.1f} min", flush=True)
        for job in list(pending):
            if job.needs in failed:
                pending.remove(job)
                failed.add(job.name)
                print(f"   {job.name}: skipped, {job.needs} failed", flush=True)
        for job in list(pending):
            if len(running) >= args.jobs:
                break
            if job.needs is not None and job.needs not in finished:
                continue
            pending.remove(job)
            running[job.name] = (job, launch(job.command, job.folder, args.threads), time.time())
            print(f"   started {job.name}", flush=True)
        time.sleep(5)
    return walls


def load_eval(out: Path, method: str, seed: int | None = None) -> dict[str, float]:
    return json.loads((run_dir(out, method, seed) / "eval.json").read_text())


def format_table(args: argparse.Namespace) -> str:
    lines = [
        "| model | seeds | " + " | ".join(METRICS) + " | AP gain over baseline |",
        "|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    if done(args.out, TEACHER):
        teacher = load_eval(args.out, TEACHER)
        cells = [f"{teacher[m]:.1f}" if teacher[m] == teacher[m] else "n/a" for m in METRICS]
        lines.append("| teacher (width 0.5, seed 0) | 1 | " + " | ".join(cells) + " | |")
    baseline = None
    for method in args.methods:
        rows = {s: load_eval(args.out, method, s) for s in args.seeds if done(args.out, method, s)}
        if not rows:
            continue
        cells = [mean_std([row[m] for row in rows.values()]) for m in METRICS]
        if method == "baseline":
            baseline = {s: row["AP"] for s, row in rows.items()}
            gain = ""
        elif baseline:
            # Paired by seed: the same seed gives the same data order and initialisation.
            diffs = [rows[s]["AP"] - baseline[s] for s in rows if s in baseline]
            gain = mean_std(diffs, signed=True) if diffs else ""
        else:
            gain = ""
        lines.append(f"| {LABELS[method]} | {len(rows)} | " + " | ".join(cells) + f" | {gain} |")
    return "\n".join(lines)


def results_body(out: Path, table: str) -> str:
    """Machine, every invocation that trained runs of ``out`` (date, command, wall time), settings, table."""
    log = out / SWEEP_LOG
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    records = [r for r in records if r["trained"]]
    lines = []
    if records:
        first = records[0]["header"]
        lines += [f"- {line}" for line in first if not line.startswith(("date:", "command:"))]
        for k, record in enumerate(records, start=1):
            facts = dict(line.split(": ", 1) for line in record["header"] if line.startswith(("date:", "command:")))
            lines.append(
                f"- invocation {k}: {facts.get('date', '?')}, `{facts.get('command', '?')}`, wall time "
                f"{record['wall_min']:.1f} min, trained {len(record['trained'])} jobs"
            )
        lines.append(f"- settings: {records[-1]['settings']}")
        lines.append(f"- total wall time: {sum(r['wall_min'] for r in records):.1f} min")
    return "\n".join([*lines, "", table])


def write_section(path: Path, body: str) -> None:
    """Put ``HEADING`` + ``body`` into ``path``, replacing the old section (up to the next ``## ``)."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    section = f"{HEADING}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/adl_gid_effectiveness"), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed values of the students")
    parser.add_argument("--detector", choices=list(CONFIGS), default="fcos", help="family of demo configs")
    parser.add_argument(
        "--methods", nargs="+", default=list(LABELS), choices=list(LABELS), help="students to train"
    )
    parser.add_argument("--iters", type=int, default=300, help="iterations of every student run")
    parser.add_argument("--teacher-iters", type=int, default=600, help="iterations of the teacher run")
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic images")
    parser.add_argument("--num-val", type=int, default=64, help="validation images")
    parser.add_argument("--num-unlabeled", type=int, default=256, help="unlabeled images for the pseudo-labels")
    parser.add_argument("--score-threshold", type=float, default=0.4, help="pseudo-label score threshold")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--results", type=Path, help="Markdown file to write the table into (with --table-only too)"
    )
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    args = parser.parse_args()

    header = environment_lines()
    for line in header:
        print(line)
    settings = (
        f"{args.detector}, {args.image_size} px synthetic images ({args.num_val} val, {args.num_unlabeled} unlabeled), students "
        f"{args.iters} iterations, teacher {args.teacher_iters}, seeds {args.seeds}, pseudo-label threshold "
        f"{args.score_threshold}, {args.jobs} runs at a time with {args.threads} thread(s) each"
    )
    print(f"runs: {args.out}; {settings}")
    start = time.time()
    if not args.table_only:
        args.out.mkdir(parents=True, exist_ok=True)
        walls = sweep(args)
        for method in args.methods:
            times = [walls[f"{method} seed {s}"] for s in args.seeds if f"{method} seed {s}" in walls]
            if times:
                print(f"   {method}: {statistics.mean(times) / 60:.1f} min per run (mean of {len(times)})")
        wall = (time.time() - start) / 60
        print(f"sweep wall time: {wall:.1f} min")
        record = {"header": header, "settings": settings, "wall_min": round(wall, 1), "trained": sorted(walls)}
        with open(args.out / SWEEP_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    table = format_table(args)
    print()
    print(table)
    if args.results is not None:
        write_section(args.results, results_body(args.out, table))
        print(f"\nwritten to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
