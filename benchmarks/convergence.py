"""Learning curves: validation AP against iterations for the MSAD demo's FCOS baselines.

Trains ``msad/fcos_high_demo`` (256 px input) and ``msad/fcos_low_demo`` (the 0.5x copy) at width
0.25 on the synthetic dataset, from scratch and, with ``--init pretrained``, from a slimmable
backbone made by ``msadkit pretrain``, at each learning rate of ``--lrs``. Every run validates every
``--eval-period`` iterations (``trainer.eval_period``: ``val/AP`` rows in its ``metrics.jsonl``). The
runs go one after another, each in its own process with ``--threads`` torch threads, so two runs
never share the CPU cores. A run's schedule is the config's, scaled to ``--iters`` by the rule of
``msadkit train --iterations`` (warm-up and LR steps keep their share of the run).

The table gives AP at every evaluation, the run's first LR decay, and where each curve flattens:
the first evaluation after which AP never gains more than ``--flat-gain`` AP over the rest of the
curve ("not yet" when the last step still gains more), over the whole run and over the
evaluations up to the decay (a curve that flattens only after the decay had not converged). Runs that finished before (an ``eval.json`` in
their folder) are reused, so ``--table-only`` reprints the table.

    MSADKIT_CACHE=<cache folder> python -m benchmarks.convergence --out runs/convergence \\
        --iters 600 --eval-period 100 --lrs 0.01 0.02 --init scratch pretrained
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import print_environment

CONFIGS = {"high": "msad/fcos_high_demo", "low": "msad/fcos_low_demo"}

# Seconds-long runs that check the script works: 8 training / 4 validation images of 64 px.
QUICK_OVERRIDES = [
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "data.size_divisibility=64",
    "data.train_short_sides=[64]",
    "data.train_max_size=64",
    "data.test_short_side=64",
    "data.test_max_size=64",
    "solver.batch_size=2",
    "trainer.eval_batch_size=4",
]


def run_name(resolution: str, init: str, lr: float, seed: int) -> str:
    return f"{resolution}_{init}_lr{lr:g}_s{seed}"


def overrides(args: argparse.Namespace, resolution: str, init: str, lr: float, seed: int) -> list[str]:
    values = [
        f"output_dir={args.out / run_name(resolution, init, lr, seed)}",
        f"trainer.seed={seed}",
        f"solver.base_lr={lr}",
        f"trainer.eval_period={args.eval_period}",
        f"trainer.checkpoint_period={args.iters}",
        "trainer.progress_bar=false",
    ]
    if init == "pretrained":
        values.append(f"model.backbone.weights={args.pretrained}")
    return values + (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)


def train(args: argparse.Namespace, resolution: str, init: str, lr: float, seed: int) -> float:
    """Train one curve in a child process; its wall seconds (0 when it was done before)."""
    folder = args.out / run_name(resolution, init, lr, seed)
    if (folder / "eval.json").is_file():
        return 0.0
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, "-m", "msadkit.cli", "train", CONFIGS[resolution], "--iterations", str(args.iters)]
    command += overrides(args, resolution, init, lr, seed)
    start = time.time()
    with open(folder / "train.log", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"run {folder} failed with exit code {code}; see {folder / 'train.log'}")
    return time.time() - start


def curve(folder: Path) -> list[tuple[int, float]]:
    """``(iteration, val AP)`` of every evaluation of the run in ``folder``."""
    from msadkit.engine.train.metrics_logger import read_metrics
    from msadkit.engine.train.validation import validation_rows

    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [(int(row["iter"]), float(row["val/AP"])) for row in validation_rows(read_metrics(path))]


def flattens_at(points: list[tuple[int, float]], gain: float) -> int | None:
    """The first iteration after which AP never rises more than ``gain`` above its value there.

    None when the last evaluation is still more than ``gain`` above the one before it (still rising).
    Example: APs 2, 10, 14, 14.5, 14.8 at 100..500 with gain 1 flatten at 300.
    """
    if len(points) < 2 or points[-1][1] - points[-2][1] > gain:
        return None
    for index, (iteration, ap) in enumerate(points):
        if max(a for _, a in points[index:]) - ap <= gain:
            return iteration
    return None


def first_lr_step(folder: Path) -> int | None:
    """The first LR decay of the run in ``folder`` (its ``config.yaml``), None when unknown."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        return None
    steps = (yaml.safe_load(path.read_text()) or {}).get("solver", {}).get("steps") or []
    return min(steps) if steps else None


def format_table(curves: dict[str, list[tuple[int, float]]], gain: float, decays: dict[str, int | None]) -> str:
    """Markdown: AP per evaluation; where the curve flattens, over the whole run and before the LR decay.

    A curve that flattens only after the decay had not converged at its learning rate: the step
    down of the LR buys the last gain, and more iterations before it would buy more.
    """
    iterations = sorted({i for points in curves.values() for i, _ in points})
    lines = [
        "| run | " + " | ".join(str(i) for i in iterations) + " | LR decay at | flattens at | before the decay |",
        "|---|" + "---|" * (len(iterations) + 3),
    ]
    for name, points in curves.items():
        by_iter = dict(points)
        cells = [f"{by_iter[i]:.1f}" if i in by_iter else "" for i in iterations]
        decay = decays.get(name)
        flat = flattens_at(points, gain)
        before = flattens_at([p for p in points if decay is None or p[0] <= decay], gain)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {decay if decay is not None else '?'} | "
            f"{flat if flat is not None else 'not yet'} | {before if before is not None else 'not yet'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"), help="folder of the run folders")
    parser.add_argument("--iters", type=int, default=600, help="iterations of every run")
    parser.add_argument("--eval-period", type=int, default=100, help="validate every N iterations")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.02], help="solver.base_lr values")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="trainer.seed values")
    parser.add_argument("--resolutions", nargs="+", choices=sorted(CONFIGS), default=["high", "low"])
    parser.add_argument("--init", nargs="+", choices=["scratch", "pretrained"], default=["scratch"],
                        help="backbone start: random, or the --pretrained checkpoint")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="slimmable multi-width checkpoint (msadkit pretrain); default: made or reused by it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--flat-gain", type=float, default=1.0, help="AP gain below which a curve counts as flat")
    parser.add_argument("--quick", action="store_true", help="tiny dataset and run: checks that the script works")
    parser.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. solver.batch_size=8")
    args = parser.parse_args()
    if args.quick and args.iters == parser.get_default("iters"):
        args.iters, args.eval_period = 4, 2
    if args.eval_period < 1 or args.eval_period > args.iters:
        parser.error(f"--eval-period must be between 1 and --iters ({args.iters}), got {args.eval_period}")

    print_environment()
    if "pretrained" in args.init and args.pretrained is None and not args.table_only:
        from msadkit.engine.train.pretrain import cached_pretrained_backbone

        args.pretrained = cached_pretrained_backbone(quick=args.quick)
        print(f"pretrained backbone: {args.pretrained}", flush=True)
    start = time.time()
    curves: dict[str, list[tuple[int, float]]] = {}
    decays: dict[str, int | None] = {}
    for seed in args.seeds:
        for init in args.init:
            for lr in args.lrs:
                for resolution in args.resolutions:
                    name = run_name(resolution, init, lr, seed)
                    if not args.table_only:
                        wall = train(args, resolution, init, lr, seed)
                        if wall:
                            print(f"   {name}: {wall / 60:.1f} min", flush=True)
                    curves[name] = curve(args.out / name)
                    decays[name] = first_lr_step(args.out / name)
    if not args.table_only:
        print(f"study wall time: {(time.time() - start) / 60:.1f} min")
    print()
    print(format_table(curves, args.flat_gain, decays))
    return 0


if __name__ == "__main__":
    sys.exit(main())
