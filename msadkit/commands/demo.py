"""`msadkit demo`: the four notebooks in order on the embedded synthetic dataset, on the CPU.

MSAD end to end, as the paper sets it up: every detector starts from a pretrained slimmable ResNet-50
(here the one ``msadkit pretrain`` trains on synthetic training crops, cached after the first
demo), then the multi-scale teacher and the high-resolution FCOS baseline train (01), the
low-resolution student distilled from the teacher and the same student trained without a teacher
(02), 450 iterations each, plus that baseline trained step-matched for teacher and student together
(900 iterations: the student starts from the teacher's weights); their feature alignment is drawn
(03) and the AP table written (04).
About 8 minutes on an idle 2-core machine (benchmarks/RESULTS.md, "End-to-end CPU demo").
``--iterations N`` shortens every training run with the rule of ``msadkit train --iterations`` (every
count of iterations of the configs follows, the KD ramp included), for a quick look at the pipeline;
``--from-scratch`` skips the pretrained backbone. Set
``OMP_NUM_THREADS=1`` on a machine whose cores are shared with other work: PyTorch's CPU threads
slow down many times over when they wait for busy cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = [
    "add_parser",
    "run",
    "demo_plan",
    "pretrained_overrides",
    "DEMO_TEACHER_ITERATIONS",
    "DEMO_STUDENT_ITERATIONS",
    "DEMO_PRETRAINED_LR",
]

# One schedule for every model, as in the paper's tables. The demo configs' own 300 iterations are
# too short for the teacher: from the pretrained backbone it scores 20 AP there, 33 after 450
# (benchmarks/RESULTS.md).
DEMO_TEACHER_ITERATIONS = 450
DEMO_STUDENT_ITERATIONS = 450
# The learning rate that beat 0.01 in every pretrained run of the learning-curve study.
DEMO_PRETRAINED_LR = 0.03


def pretrained_overrides(weights: str | Path | None) -> list[str]:
    """Config overrides that start a demo config from ``weights`` (a ``msadkit pretrain`` file);
    none when ``weights`` is None (training from scratch with the config's own learning rate)."""
    if weights is None:
        return []
    return [f"model.backbone.weights={Path(weights).expanduser().resolve()}", f"solver.base_lr={DEMO_PRETRAINED_LR}"]


def demo_plan(
    out_dir: str | Path,
    *,
    teacher_iterations: int = DEMO_TEACHER_ITERATIONS,
    student_iterations: int = DEMO_STUDENT_ITERATIONS,
    overrides: list[str] | None = None,
    image_indices: list[int] | None = None,
    pretrained: str | Path | None = None,
) -> list[tuple[str, Path, dict[str, Any]]]:
    """The demo's notebook runs: ``(notebook, run folder, parameters)`` in execution order.

    Notebook 01 runs twice: for the MSAD teacher and for the high-resolution FCOS baseline of the
    same length (the paper's table compares the two).

    Args:
        out_dir: parent folder of the run folders.
        teacher_iterations: training length of the teacher and of the high-res baseline.
        student_iterations: training length of the distilled student and the low-res baseline.
        overrides: config overrides for every training run (tests shrink the dataset with them).
        image_indices: validation images of the feature-alignment notebook.
        pretrained: backbone checkpoint every model starts from (trained at ``DEMO_PRETRAINED_LR``);
            None trains from scratch with the configs' learning rate.
    """
    out = Path(out_dir).expanduser().resolve()
    teacher_dir = out / "01_teacher_training"
    students_dir = out / "02_student_distillation"
    common = {"device": "cpu", "devices": 1, "seed": 0, "overrides": pretrained_overrides(pretrained) + list(overrides or [])}
    return [
        ("01_teacher_training", teacher_dir,
         {"config": "msad/msad_teacher_demo", "iterations": teacher_iterations, "evaluate_branches": True, **common}),
        ("01_teacher_training", out / "01_high_res_baseline",
         {"config": "msad/fcos_high_demo", "iterations": teacher_iterations, "evaluate_branches": False, **common}),
        ("02_student_distillation", students_dir,
         {"teacher_run": str(teacher_dir), "student_config": "msad/msad_student_demo", "iterations": student_iterations,
          **common}),
        ("03_feature_alignment", out / "03_feature_alignment",
         {"teacher_run": str(teacher_dir), "student_run": str(students_dir / "student"),
          "baseline_run": str(students_dir / "baseline"), "image_indices": list(image_indices or [1, 3]),
          "device": "cpu"}),
        ("04_ap_table", out / "04_ap_table", {"search_dirs": [str(out)]}),
    ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the four notebooks on the embedded dataset on CPU (MSAD end to end, about 8 minutes on 2 cores)",
        description="Teacher training, student distillation, feature alignment and the AP table on the embedded "
        "synthetic dataset, on the CPU. Finished steps are skipped when the demo is run again. On a machine "
        "whose cores are busy with other work, run it as `OMP_NUM_THREADS=1 msadkit demo`.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--force", action="store_true", help="execute every notebook again (training runs are still reused)")
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help=f"train every model for N iterations instead of {DEMO_TEACHER_ITERATIONS}, scaling warm-up and LR steps "
        "(a quick run; the AP table labels its schedule demo-Nit)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="train every model from a randomly initialised backbone instead of the one `msadkit pretrain` makes "
        "(cached after the first demo); far lower AP",
    )
    p.add_argument("--teacher-iterations", type=int, default=DEMO_TEACHER_ITERATIONS, help=argparse.SUPPRESS)
    p.add_argument("--student-iterations", type=int, default=DEMO_STUDENT_ITERATIONS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from msadkit.notebook.runner import run_notebook

    start = time.perf_counter()
    teacher_iterations, student_iterations = args.teacher_iterations, args.student_iterations
    if args.iterations is not None:
        from msadkit.errors import ConfigError

        if args.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
        teacher_iterations = student_iterations = args.iterations
    pretrained = None
    if not args.from_scratch:
        from msadkit.engine.train.pretrain import cached_pretrained_backbone

        print("[0] pretrained backbone (msadkit pretrain, cached after the first demo)", flush=True)
        begin = time.perf_counter()
        pretrained = cached_pretrained_backbone(log=lambda line: print(f"    {line}", flush=True))
        print(f"[0] pretrained backbone: {pretrained} ({time.perf_counter() - begin:.0f} s)", flush=True)
    plan = demo_plan(
        args.out, teacher_iterations=teacher_iterations, student_iterations=student_iterations, pretrained=pretrained
    )
    results = {}
    for step, (notebook, run_dir, parameters) in enumerate(plan, start=1):
        print(f"[{step}/{len(plan)}] {notebook} -> {run_dir}", flush=True)
        result = run_notebook(notebook, run_dir, parameters, force=args.force)
        results[run_dir.name] = result
        note = "finished before, skipped" if result.skipped else f"{result.duration_s:.0f} s"
        print(f"[{step}/{len(plan)}] {notebook}: {note}", flush=True)

    table = results["04_ap_table"]
    table_files = {kind: table.run_dir / path for kind, path in table.results.get("files", {}).items()}
    print()
    if "markdown" in table_files:
        print(table_files["markdown"].read_text())
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print("AP table: " + ", ".join(str(path) for path in table_files.values()))
    print("figures:")
    for result in results.values():
        for path in result.results.get("figures", {}).values():
            print(f"  {result.run_dir / path}")
    print("executed notebooks:")
    for result in results.values():
        print(f"  {result.executed_notebook}")
    return 0
