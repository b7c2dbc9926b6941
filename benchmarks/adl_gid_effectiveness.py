"""ADL, SAD and GID on the synthetic dataset: does distillation beat the baseline student?

Trains, from the packaged demo configs of one detector family (``--detector``, FCOS by default):

- the teacher (``gid/fcos_teacher_demo``: slimmable R-50 width 0.5, longer schedule), once;
- its pseudo-labels on the synthetic ``unlabeled`` split (``msadkit pseudo-label``);
- for every ``trainer.seed``, the width-0.25 student as baseline (``adl/fcos_student_demo``), with
  ADL (``adl/fcos_adl_demo``), with ADL on labeled + pseudo-labeled images (``adl/fcos_sad_demo``),
  with GID (``gid/fcos_gid_demo``) and with GID + MSAD features (``gid/fcos_gid_msad_demo``),

each run in its own single-threaded process (``--jobs`` at a time). Every backbone starts from the
``msadkit pretrain`` checkpoint of its width (``--pretrained auto``: width 0.25 for the students,
0.5 for the teacher, made once in the msadkit cache by the first jobs of the sweep and reused
afterwards), at LR ``--lr`` for teacher and students alike.

FCOS is the default because a freshly initialised RetinaNet spends the first ~150 iterations of
the demo schedule on the focal-loss plateau (0.1-0.4 AP after 200 iterations at 128 px against
1.9 AP for FCOS), which leaves nothing to compare in a CPU-sized run.

The script then prints the COCO AP table: mean ± std over seeds, each method's gain over the
baseline paired by seed (mean ± sample std, n-1, of the per-seed differences) and the target
verdict: PASS when the gain is >= 1.0 AP and >= 2 x its std, else MISSED. With ``--results`` it
writes the table into that Markdown file under the heading ``## ADL and GID on the synthetic
dataset`` (replacing an older version of the section; a tuning table goes under its own heading,
``... : tuning runs``).

Protocol: choose the settings on a tuning seed (``--tuning-seed``, 100 by default, never a reported
seed; its students go to ``<out>/tuning/`` and its table is marked as tuning), then run the reported
seeds once with the chosen settings. Both use the same teacher (``<out>/teacher`` or ``--teacher``).
A method's own settings go in ``--set METHOD:KEY=VALUE`` (the teacher's command, and so its reuse,
stays unchanged); try another setting in another ``--out`` with ``--teacher <first out>/teacher``.

Sizes: the demo configs train the teacher 600 and the students 300 iterations at 256 px; at that
size the teacher, pseudo-labels and 5 methods x 3 seeds would need an estimated 100 minutes on an idle
2-core machine, so the defaults keep the iteration counts at 128 px images (128 validation images),
an estimated 27 minutes there (each run single-threaded, two at a time; both pretrainings included),
within the 60-minute budget (a machine loaded by other work stretches it, see RESULTS.md).

Run folders that already hold an ``eval.json`` are reused, so an interrupted sweep continues where
it stopped and ``--table-only`` reprints the table; a folder trained with other settings (its
``sweep_command.json`` differs) stops the sweep with an error instead of entering the table.

    MSADKIT_CACHE=<cache folder> python benchmarks/adl_gid_effectiveness.py --out runs/adl_gid --tuning-seed
    MSADKIT_CACHE=<cache folder> python benchmarks/adl_gid_effectiveness.py --out runs/adl_gid \\
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
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    append_sweep_record,
    environment_lines,
    mean_std,
    replace_markdown_section,
    sweep_log_lines,
)

HEADING = "## ADL and GID on the synthetic dataset"
TUNING_HEADING = HEADING + ": tuning runs"
TEACHER = "teacher"
DEFAULT_TUNING_SEED = 100
# Slimmable widths of the pretrained checkpoints: the teacher's and the students' backbones.
WIDTHS = {TEACHER: 0.5, "student": 0.25}
# The target for every method's paired AP gain over the baseline student.
TARGET_GAIN = 1.0
TARGET_STDS = 2.0
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
COMMAND_FILE = "sweep_command.json"  # the command that trained a run folder, to refuse mixing settings


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
    choice = args.pretrained
    if choice == ["none"]:
        return {TEACHER: None, "student": None}
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path

    auto = {role: cached_pretrained_path(PretrainSettings(width=width)) for role, width in WIDTHS.items()}
    if choice == ["auto"]:
        return auto
    return {"student": Path(choice[0]), TEACHER: Path(choice[1]) if len(choice) > 1 else auto[TEACHER]}


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


def pretrain_command(width: float) -> list[str]:
    # The defaults of `msadkit pretrain` are PretrainSettings(), so the file lands at the cached path.
    return [sys.executable, "-m", "msadkit.cli", "pretrain", "--width", f"{width:g}"]


def teacher_command(args: argparse.Namespace) -> list[str]:
    overrides = [
        f"output_dir={teacher_dir(args)}",
        "trainer.seed=0",
        *schedule(args.teacher_iters),
        *start_overrides(args, TEACHER),
        *data_overrides(args),
        *args.overrides,
        *method_overrides(args, TEACHER),
    ]
    return [sys.executable, "-m", "msadkit.cli", "train", CONFIGS[args.detector][TEACHER], *overrides]


def pseudo_label_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "msadkit.cli", "pseudo-label",
        "--teacher", str(teacher_dir(args)),
        "--score-threshold", str(args.score_threshold),
        "--out", str(pseudo_labels(args)),
    ]


def student_command(args: argparse.Namespace, method: str, seed: int) -> list[str]:
    overrides = [
        f"output_dir={student_dir(args, method, seed)}",
        f"trainer.seed={seed}",
        *schedule(args.iters),
        *start_overrides(args, "student"),
        *data_overrides(args),
    ]
    if method != "baseline":
        overrides.append(f"distill.teacher={teacher_dir(args)}")
    if method == "sad":
        overrides.append(f"data.pseudo_labels_json={pseudo_labels(args)}")
    return [
        sys.executable, "-m", "msadkit.cli", "train", CONFIGS[args.detector][method],
        *overrides, *args.overrides, *method_overrides(args, method),
    ]


class Job:
    """One process of the sweep: what it runs, where it logs, when it is finished, what it waits for."""

    def __init__(
        self, name: str, command: list[str], folder: Path, log: str, finished: Callable[[], bool],
        needs: Sequence[str] = (), checked: bool = True,
    ) -> None:
        self.name, self.command, self.folder, self.log = name, command, folder, log
        self.finished, self.needs, self.checked = finished, tuple(needs), checked


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every job in launch priority order: pretraining, the teacher, baselines meanwhile, then the rest."""
    queue: list[Job] = []
    teacher = teacher_dir(args)
    pretrain_job: dict[str, tuple[str, ...]] = {TEACHER: (), "student": ()}
    for role in automatic_roles(args):
        if role == TEACHER and (teacher / "eval.json").is_file():
            continue  # a finished teacher needs no backbone checkpoint any more
        name, path = f"pretrain width {WIDTHS[role]:g}", pretrained_weights(args)[role]
        queue.append(Job(name, pretrain_command(WIDTHS[role]), args.out / f"pretrain_w{WIDTHS[role]:g}",
                         "pretrain.log", path.is_file, checked=False))
        pretrain_job[role] = (name,)
    queue += [
        Job(TEACHER, teacher_command(args), teacher, "train.log", lambda: (teacher / "eval.json").is_file(),
            pretrain_job[TEACHER]),
        Job("pseudo-labels", pseudo_label_command(args), teacher, "pseudo_label.log", pseudo_labels(args).is_file,
            (TEACHER,), checked=False),
    ]
    for seed in args.seeds:
        for method in args.methods:
            folder = student_dir(args, method, seed)
            needs = {"baseline": (), "sad": ("pseudo-labels",)}.get(method, (TEACHER,))
            queue.append(Job(f"{method} seed {seed}", student_command(args, method, seed), folder, "train.log",
                             lambda f=folder: (f / "eval.json").is_file(), needs + pretrain_job["student"]))
    # The long width-0.5 pretraining and the teacher are on the critical path: they go first, the
    # baselines (no teacher) fill the other job slot meanwhile, the pseudo-labels before the students.
    def priority(job: Job) -> int:
        if job.name.startswith("pretrain"):
            return 0
        order = {TEACHER: 1, "pseudo-labels": 3}
        if job.name in order:
            return order[job.name]
        return 2 if not any(n in (TEACHER, "pseudo-labels") for n in job.needs) else 4 + ("pseudo-labels" in job.needs)

    return sorted(queue, key=priority)


def recorded_command(command: list[str]) -> list[str]:
    """The part of a command that decides a run's result (not the interpreter's path)."""
    return command[3:]


def check_reuse(job: Job) -> None:
    """Refuse a run folder trained by another command: its result would enter the table silently."""
    if not job.checked:
        return
    record = job.folder / COMMAND_FILE
    if not record.is_file():
        return
    previous, current = json.loads(record.read_text()), recorded_command(job.command)
    if previous != current:
        differences = sorted(set(previous) ^ set(current))
        print(
            f"error: {job.folder} was trained with other settings ({COMMAND_FILE} differs in: "
            f"{', '.join(differences) or 'argument order'}); use another --out or remove that folder",
            file=sys.stderr,
        )
        raise SystemExit(2)


def launch(job: Job, threads: int) -> subprocess.Popen:
    job.folder.mkdir(parents=True, exist_ok=True)
    command = job.command
    if job.checked:
        from msadkit.utils.atomic import write_text_atomic

        write_text_atomic(job.folder / COMMAND_FILE, json.dumps(recorded_command(command)))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if command[3] == "train" and (job.folder / "checkpoints" / "last.ckpt").is_file():
        command = [*command, "--resume"]  # an interrupted sweep continues the run
    with open(job.folder / job.log, "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def sweep(args: argparse.Namespace) -> dict[str, float]:
    """Run every job not finished yet, ``args.jobs`` at a time; wall seconds per job."""
    queue = jobs(args)
    for job in queue:
        check_reuse(job)
    pending = [job for job in queue if not job.finished()]
    finished = {job.name for job in queue if job.finished()}
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
            status = "done" if ok else f"FAILED (exit {code}, see {job.folder / job.log})"
            print(f"   {name}: {status} in {walls[name] / 60:.1f} min", flush=True)
        for job in list(pending):
            missing = [n for n in job.needs if n in failed]
            if missing:
                pending.remove(job)
                failed.add(job.name)
                print(f"   {job.name}: skipped, {missing[0]} failed", flush=True)
        for job in list(pending):
            if len(running) >= args.jobs:
                break
            if not all(n in finished for n in job.needs):
                continue
            pending.remove(job)
            running[job.name] = (job, launch(job, args.threads), time.time())
            print(f"   started {job.name}", flush=True)
        time.sleep(5)
    return walls


def load_ap(folder: Path) -> dict[str, float]:
    return json.loads((folder / "eval.json").read_text())


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
    lines = []
    if tuning:
        lines += [f"**Tuning seed {args.tuning_seed}: for choosing the settings, not a reported result.**", ""]
    lines += [
        "| model | seeds | " + " | ".join(METRICS) + " | AP gain over baseline | target |",
        "|---|---|" + "---|" * len(METRICS) + "---|---|",
    ]
    teacher = teacher_dir(args)
    if (teacher / "eval.json").is_file():
        row = load_ap(teacher)
        cells = [f"{row[m]:.1f}" if row[m] == row[m] else "n/a" for m in METRICS]
        lines.append("| teacher (width 0.5, seed 0) | 1 | " + " | ".join(cells) + " | | |")
    baseline: dict[int, float] = {}
    per_seed = []
    for method in args.methods:
        rows = {s: load_ap(student_dir(args, method, s)) for s in args.seeds
                if (student_dir(args, method, s) / "eval.json").is_file()}
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
        (
            "Gain: mean ± sample standard deviation (n-1) over seeds of the per-seed paired AP difference "
            f"(method - baseline, same seed). Target: PASS when gain >= {TARGET_GAIN:g} AP and gain >= "
            f"{TARGET_STDS:g} x that std, else MISSED."
        ),
    ]
    return "\n".join(lines)


def results_body(root: Path, table: str) -> str:
    """Machine, every invocation that trained runs of ``root`` (date, command, wall time), settings, table."""
    return "\n".join([*sweep_log_lines(root, "jobs"), "", table])


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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/adl_gid_effectiveness"), help="folder of the run folders")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reported trainer.seed values of the students")
    parser.add_argument(
        "--tuning-seed", type=int, nargs="?", const=DEFAULT_TUNING_SEED, default=None,
        help=f"train only this student seed (alone: {DEFAULT_TUNING_SEED}) into <out>/tuning, to choose settings",
    )
    parser.add_argument("--teacher", type=Path, default=None, help="teacher run folder; None: <out>/teacher")
    parser.add_argument("--detector", choices=list(CONFIGS), default="fcos", help="family of demo configs")
    parser.add_argument(
        "--methods", nargs="+", default=list(LABELS), choices=list(LABELS), help="students to train"
    )
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
    parser.add_argument("--lr", type=float, default=0.03, help="solver.base_lr of the teacher and the students")
    parser.add_argument("--iters", type=int, default=300, help="iterations of every student run")
    parser.add_argument("--teacher-iters", type=int, default=600, help="iterations of the teacher run")
    parser.add_argument("--image-size", type=int, default=128, help="side of the synthetic images")
    parser.add_argument("--num-val", type=int, default=128, help="validation images")
    parser.add_argument("--num-unlabeled", type=int, default=256, help="unlabeled images for the pseudo-labels")
    parser.add_argument("--score-threshold", type=float, default=0.4, help="pseudo-label score threshold")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--results", type=Path, help="Markdown file to write the table into (with --table-only too)"
    )
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    args = parser.parse_args(argv)
    if args.tuning_seed is not None:
        if args.tuning_seed in args.seeds:
            parser.error(f"--tuning-seed {args.tuning_seed} is one of the reported --seeds {args.seeds}")
        args.seeds = [args.tuning_seed]
    choice = args.pretrained
    if len(choice) > 2 or (len(choice) == 2 and {"auto", "none"} & set(choice)):
        parser.error(
            f"--pretrained takes auto, none, or one or two checkpoint files, got {' '.join(choice)} "
            "(config overrides go before the options, or after --)"
        )
    if choice not in (["auto"], ["none"]):
        for path in choice:
            if not Path(path).is_file():
                parser.error(f"--pretrained: no such checkpoint file: {path}")
    for item in args.set:
        method, _, override = item.partition(":")
        if method not in (TEACHER, *LABELS) or "=" not in override:
            parser.error(f"--set takes METHOD:KEY=VALUE with METHOD one of {TEACHER}, {', '.join(LABELS)}; got {item!r}")
    if args.lr <= 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    return args


def main() -> int:
    args = parse_args()
    header = environment_lines()
    for line in header:
        print(line)
    settings = settings_line(args)
    root = students_root(args)
    print(f"runs: {root}; {settings}")
    start = time.time()
    if not args.table_only:
        root.mkdir(parents=True, exist_ok=True)
        for role, path in pretrained_weights(args).items():
            if path is not None and path.is_file():
                print(f"pretrained backbone of the {role} (width {WIDTHS[role]:g}): {path} (already there)")
        walls = sweep(args)
        for name in sorted(walls):
            if name.startswith("pretrain"):
                print(f"   {name}: {walls[name] / 60:.1f} min")
        for method in args.methods:
            times = [walls[f"{method} seed {s}"] for s in args.seeds if f"{method} seed {s}" in walls]
            if times:
                print(f"   {method}: {statistics.mean(times) / 60:.1f} min per run (mean of {len(times)})")
        wall = (time.time() - start) / 60
        print(f"sweep wall time: {wall:.1f} min")
        append_sweep_record(root, {"header": header, "settings": settings, "wall_min": round(wall, 1),
                                   "trained": sorted(walls)})
    table = format_table(args)
    print()
    print(table)
    if args.results is not None:
        heading = TUNING_HEADING if args.tuning_seed is not None else HEADING
        replace_markdown_section(args.results, heading, results_body(root, table))
        print(f"\nwritten to {args.results} under '{heading}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
