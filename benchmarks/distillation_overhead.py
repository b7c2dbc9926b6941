"""Cost of a distillation training step against its unavoidable parts.

For each method a teacher is built from its packaged demo config (random weights, written to a
temporary ``model_final.pth`` with its config) and the student's demo config is built through
``build_model``, which loads that teacher strictly and returns the :class:`Distiller`. Three
contenders alternate in every round:

- ``distiller``: one distillation step, forward (student losses, teacher under ``no_grad``,
  distillation terms) + backward + SGD step over the student and the terms' adapters;
- ``student``: one plain step of the same student module on the same batch;
- ``teacher``: the teacher's no-grad ``distillation_outputs`` on the same batch (for MSAD the
  backbone on both resolutions and the fusion; for ADL/GID also the head).

The overhead ratio of a round is ``distiller / (student + teacher)``: what the distiller adds on
top of running the two models (the loss terms, their backward, bookkeeping). Distillation ramps
are taken as finished (the distiller's iteration is set far past them), so every term computes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch

from benchmarks.common import (
    add_common_arguments,
    interleaved_times,
    markdown_table,
    median_ms,
    start_benchmark,
    synthetic_boxes,
    target_verdict,
    timed_rounds,
)
from msadkit.config import load_config
from msadkit.distill.distiller import Distiller
from msadkit.engine.train.trainer import build_training_model
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic

TARGET_RATIO = 1.10
# method -> (teacher config, student config), all packaged demos.
METHODS: dict[str, tuple[str, str]] = {
    "msad": ("msad/msad_teacher_demo", "msad/msad_student_demo"),
    "adl": ("adl/retinanet_teacher_demo", "adl/retinanet_adl_demo"),
    "gid": ("gid/fcos_teacher_demo", "gid/fcos_gid_demo"),
    "gid_retinanet": ("adl/retinanet_teacher_demo", "gid/retinanet_gid_demo"),
}
# Far past every distillation ramp (MSAD's is 500 iterations in the paper recipe).
FINISHED_RAMPS_ITERATION = 10**6


def size_overrides(size: int) -> list[str]:
    return [f"data.train_short_sides=[{size}]", f"data.train_max_size={size}"]


def build_distiller(method: str, folder: Path, size: int) -> Distiller:
    teacher_name, student_name = METHODS[method]
    torch.manual_seed(0)
    teacher_config = load_config(teacher_name, size_overrides(size))
    teacher = build_model(teacher_config)
    checkpoint = folder / f"{method}_teacher.pth"
    save_atomic({"model": teacher.state_dict(), "config": teacher_config}, checkpoint)
    student_config = load_config(student_name, size_overrides(size) + [f"distill.teacher={checkpoint}"])
    distiller = build_training_model(student_config)
    if not isinstance(distiller, Distiller):
        raise TypeError(f"{student_name} did not build a Distiller but a {type(distiller).__name__}")
    distiller.iteration = FINISHED_RAMPS_ITERATION
    return distiller.train()


def make_contenders(
    distiller: Distiller, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
) -> dict[str, Callable[[], None]]:
    image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
    student, teacher = distiller.student, distiller.teacher
    need_predictions = any(term.needs_teacher_predictions for term in distiller.distill_losses)
    distill_optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    student_optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def distill_step() -> None:
        losses = distiller(images, image_sizes, targets)
        distill_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        distill_optimizer.step()

    def student_step() -> None:
        losses = student(images, image_sizes, targets)
        student_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        student_optimizer.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher.distillation_outputs(images, image_sizes, need_predictions=need_predictions)

    return {"distiller": distill_step, "student": student_step, "teacher": teacher_forward}


def measure(method: str, folder: Path, *, batch: int, size: int, rounds: int, warmup: int) -> dict:
    distiller = build_distiller(method, folder, size)
    num_classes = distiller.student.num_classes
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = synthetic_boxes(batch, size, size, 6, num_classes)
    terms = ", ".join(type(term).__name__ for term in distiller.distill_losses)
    print(f"-- {method}: teacher {METHODS[method][0]}, student {METHODS[method][1]} ({terms}); batch {batch} x 3 x {size} x {size}")
    times = interleaved_times(make_contenders(distiller, images, targets), rounds=rounds, warmup=warmup)
    ratios = [d / (s + t) for d, s, t in zip(times["distiller"], times["student"], times["teacher"])]
    return {
        "method": method,
        "distiller_ms": median_ms(times["distiller"]),
        "student_ms": median_ms(times["student"]),
        "teacher_ms": median_ms(times["teacher"]),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=sorted(METHODS),
        default=["msad", "adl", "gid"],
        help="methods to time (gid_retinanet, GID on RetinaNet, only when named)",
    )
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--size", type=int, default=512, help="square input side, a multiple of 256 (MSAD)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size = 1, 256
    rounds = timed_rounds(args, 5)
    start_benchmark("Distillation step overhead: distiller / (student step + teacher no-grad forward)", args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            measure(method, Path(folder), batch=args.batch, size=args.size, rounds=rounds, warmup=args.warmup)
            for method in args.methods
        ]
    columns = ["method", "distiller step ms", "student step ms", "teacher forward ms", "distiller / (student + teacher)"]
    print(markdown_table(columns, [
        [row["method"], f"{row['distiller_ms']:.0f}", f"{row['student_ms']:.0f}", f"{row['teacher_ms']:.0f}",
         f"{row['ratio']:.3f}"]
        for row in rows
    ]))
    for row in rows:
        print(
            f"RATIO {row['method']} distiller/(student+teacher) = {row['ratio']:.3f} "
            f"(median of per-round ratios; {target_verdict(row['ratio'], TARGET_RATIO)})"
        )


if __name__ == "__main__":
    main()
