"""CPU training step, eager against ``trainer.compile: true``, side by side in one run.

Both contenders are the same detector (identical initial weights): one eager, one whose backbone,
head (and C-FF fusion) ``msadkit.engine.train.compile.compile_trained_model`` compiled in place, as a
run with ``trainer.compile=true`` trains it. One step is forward (losses), backward and an SGD
update, on the same normalised batch. Compilation happens in the untimed warm-up call. The figure
is the median over rounds of the per-round ratio compiled / eager (below 1: compiling pays).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import (
    add_common_arguments,
    interleaved_times,
    markdown_table,
    median_ms,
    ratio_summary,
    start_benchmark,
    synthetic_boxes,
    timed_rounds,
)
from msadkit.config import load_config
from msadkit.engine.train.compile import compile_trained_model
from msadkit.modeling.registry import build_model

CONFIGS = {"fcos": "fcos_demo", "retinanet": "retinanet_demo", "msad_teacher": "msad/msad_teacher_demo"}


def make_step(model: torch.nn.Module, images: torch.Tensor, targets: list[dict]) -> callable:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    sizes = [tuple(images.shape[-2:])] * images.shape[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = model(images, sizes, targets)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--arch", choices=sorted(CONFIGS), default="fcos")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="square input side (a multiple of 256 for msad_teacher)")
    args = parser.parse_args()
    batch, size = (1, 256) if args.quick else (args.batch, args.size)
    rounds = timed_rounds(args, 7)
    start_benchmark(f"training step on CPU: eager vs torch.compile ({args.arch}, demo config, {batch} x 3 x {size} x {size})",
                    args.threads)

    torch.manual_seed(0)
    eager = build_model(load_config(CONFIGS[args.arch], [])).train()
    compiled = copy.deepcopy(eager)
    names = compile_trained_model(compiled)
    print(f"   compiled modules: {', '.join(names)}")
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = synthetic_boxes(batch, size, size, 4, eager.num_classes if hasattr(eager, "num_classes") else 4)
    steps = {"eager": make_step(eager, images, targets), "compiled": make_step(compiled, images, targets)}

    start = time.perf_counter()
    steps["compiled"]()  # compilation, reported apart from the steady-state step
    print(f"   first compiled step (includes compilation): {time.perf_counter() - start:.1f} s")
    times = interleaved_times(steps, rounds=rounds, warmup=args.warmup)
    ratio, ratio_of_medians = ratio_summary(times, "compiled", "eager")
    medians = [(name, f"{median_ms(times[name]):.0f} ms") for name in ("eager", "compiled")]
    print("\n" + markdown_table(["step", "median"], medians))
    print(f"RATIO compiled / eager step = {ratio:.3f} (ratio of medians {ratio_of_medians:.3f})")


if __name__ == "__main__":
    main()
