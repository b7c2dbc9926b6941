"""What the run-folder lock and the divergence checks cost a training iteration.

One process trains the same tiny FCOS run (64 px synthetic images, ``fcos_demo`` with a small
head) again and again, alternating two contenders round by round (the order flips every round):

- ``checked``: as ``msadkit train`` runs it (``RunLock`` on the run folder, ``TrainingHealth``
  after every step);
- ``unchecked``: the lock replaced by a no-op and ``trainer.divergence.enabled=false``.

Each training reports its steady-state time per iteration (from the end of iteration
``--skip`` to the end of the run, so setup and the first slow iterations are left out) and its
whole wall time. The script prints the medians, the median per-round ratio checked / unchecked,
the mean time spent inside the divergence hook per iteration of the checked runs, and, timed
directly, one divergence check with its pass over the parameters, one lock acquire + release, and
one training sample drawn with and without the per-sample seeding of the exact-resume loader.

    python -m benchmarks.run_health_overhead --rounds 5 --iters 30 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

import msadkit.engine.train.trainer as trainer_module
from benchmarks.common import add_common_arguments, start_benchmark, timed_rounds
from msadkit.config import load_config
from msadkit.data.build import build_dataset
from msadkit.data.resumable_loader import SampleKey, SeededSamples
from msadkit.engine.train.trainer import build_training_model
from msadkit.engine.train.training_health import TrainingHealth, largest_parameter
from msadkit.utils.run_lock import RunLock

TINY = [
    "model.fpn.out_channels=32",
    "model.fcos.num_convs=1",
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=4",
    "data.synthetic.image_size=64",
    "data.train_short_sides=[64]",
    "data.test_short_side=64",
    "data.train_max_size=64",
    "data.test_max_size=64",
    "data.num_workers=0",
    "solver.batch_size=2",
    "solver.warmup_iters=1",
    "solver.steps=[100000]",
    "trainer.checkpoint_period=100000",
    "trainer.log_period=10",
    "trainer.progress_bar=false",
]


class NoLock:
    """Stands in for ``RunLock`` in the unchecked contender."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def acquire(self) -> "NoLock":
        return self

    def release(self) -> None:
        pass


class IterationClock(L.Callback):
    """Seconds per iteration from the end of iteration ``skip`` to the end of the run."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.start: float | None = None
        self.per_iteration = float("nan")

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()
        elif trainer.global_step > self.skip and self.start is not None:
            self.per_iteration = (time.perf_counter() - self.start) / (trainer.global_step - self.skip)


# Seconds spent inside TrainingHealth.on_train_batch_end, measured in the training itself.
_health_seconds: list[float] = []
_health_hook = TrainingHealth.on_train_batch_end


def _timed_health_hook(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _health_hook(self, *args, **kwargs)
    finally:
        _health_seconds.append(time.perf_counter() - start)


TrainingHealth.on_train_batch_end = _timed_health_hook


def train_once(root: Path, name: str, checked: bool, iters: int, skip: int) -> tuple[float, float, float]:
    """``(seconds per steady iteration, wall seconds of train(), mean seconds of the health hook)``."""
    overrides = [f"output_dir={root / name}", f"solver.max_iter={iters}", *TINY]
    if not checked:
        overrides.append("trainer.divergence.enabled=false")
    config = load_config("fcos_demo", overrides)
    clock = IterationClock(skip)
    trainer_module.RunLock = RunLock if checked else NoLock
    _health_seconds.clear()
    try:
        start = time.perf_counter()
        trainer_module.train(config, callbacks=[clock], evaluate=False)
        wall = time.perf_counter() - start
    finally:
        trainer_module.RunLock = RunLock
    hook = statistics.mean(_health_seconds) if _health_seconds else 0.0
    return clock.per_iteration, wall, hook


def direct_costs(root: Path, repeats: int) -> dict[str, float]:
    """Milliseconds of one divergence check, one lock acquire + release, one sample with/without seeding."""
    config = load_config("fcos_demo", [f"output_dir={root / 'direct'}", *TINY])
    model = build_training_model(config)
    health = TrainingHealth(config["trainer"]["divergence"], checkpoint_period=1, max_iter=1)
    losses = {"loss_a": 1.0, "loss_b": 0.5}

    def check() -> None:
        trained = (p for p in model.parameters() if p.requires_grad)
        health.monitor.problem(losses, largest_parameter(trained))

    def lock() -> None:
        RunLock(root / "locked").acquire().release()

    dataset = build_dataset(config, "train")
    seeded = SeededSamples(dataset)

    def plain_sample() -> None:
        dataset[3]

    def seeded_sample() -> None:
        seeded[SampleKey(3, 12345)]

    costs = {}
    for name, work in [("check", check), ("lock", lock), ("sample", plain_sample), ("seeded sample", seeded_sample)]:
        work()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        costs[name] = 1e3 * statistics.median(times)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--iters", type=int, default=30, help="iterations per tiny training")
    parser.add_argument("--skip", type=int, default=5, help="iterations left out of the per-iteration time")
    args = parser.parse_args()
    if args.quick:
        args.iters, args.skip = 6, 2
    rounds = timed_rounds(args, 5)
    start_benchmark("Run lock and divergence checks: time per training iteration", args.threads)
    with tempfile.TemporaryDirectory(prefix="msadkit-health-") as tmp:
        root = Path(tmp)
        results: dict[str, list[tuple[float, float, float]]] = {"checked": [], "unchecked": []}
        for index in range(args.warmup + rounds):
            order = ["checked", "unchecked"] if index % 2 == 0 else ["unchecked", "checked"]
            for name in order:
                outcome = train_once(root, f"{name}{index}", name == "checked", args.iters, args.skip)
                if index >= args.warmup:
                    results[name].append(outcome)
            if index >= args.warmup:
                cells = ", ".join(f"{n} {1e3 * results[n][-1][0]:.1f} ms/it" for n in results)
                print(f"   round {index + 1 - args.warmup}/{rounds}: {cells}")
                sys.stdout.flush()
        direct = direct_costs(root, repeats=50 if args.quick else 200)
    per_it = {name: [r[0] for r in runs] for name, runs in results.items()}
    walls = {name: [r[1] for r in runs] for name, runs in results.items()}
    ratios = [a / b for a, b in zip(per_it["checked"], per_it["unchecked"])]
    print(
        f"   per iteration: checked {1e3 * statistics.median(per_it['checked']):.1f} ms, unchecked "
        f"{1e3 * statistics.median(per_it['unchecked']):.1f} ms, median per-round ratio {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(
        f"   wall per {args.iters}-iteration run: checked {statistics.median(walls['checked']):.2f} s, "
        f"unchecked {statistics.median(walls['unchecked']):.2f} s"
    )
    print(f"RATIO checked / unchecked time per iteration: {statistics.median(ratios):.3f}")
    hooks = [r[2] for r in results["checked"]]
    print(
        f"   inside the checked runs: the divergence hook took {1e3 * statistics.median(hooks):.2f} ms per iteration "
        f"(median over runs of the mean per run; parameters checked every "
        f"{load_config('fcos_demo', TINY)['trainer']['divergence']['param_check_period']} iterations and at the end)"
    )
    print(
        f"   direct: one divergence check with its parameter pass {direct['check']:.3f} ms, one lock acquire + release {direct['lock']:.3f} ms, "
        f"one training sample {direct['sample']:.3f} ms plain / {direct['seeded sample']:.3f} ms seeded"
    )


if __name__ == "__main__":
    main()
