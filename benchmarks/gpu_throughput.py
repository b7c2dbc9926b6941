"""Training throughput and peak memory of the MSAD teacher and student on one GPU, per precision mode.

Rows: the MSAD teacher (high + low + fused branches on an 800x1333 image and its 400x667 copy) and
the MSAD student training step (the frozen teacher's no-grad pass, the low-resolution student on
the 400x667 copy and the feature-distillation loss), at backbone width 1.0 and 0.25, batch 2 and
8 per GPU, padded to multiples of 256 as the recipes do. Modes: fp32, bf16-mixed (autocast),
bf16 + channels_last, bf16 + channels_last + torch.compile (``trainer.compile``: backbone, head
and fusion of the trained model). A step is forward, backward and an SGD update; images/s is
batch / median step time after warm-up; peak memory is ``torch.cuda.max_memory_allocated``.
Then eval latency at batch 1 of the low-resolution student against the high-resolution FCOS of
the same width (bf16 + channels_last, post-processing included).

Prints one table and writes it as JSON (``--out``). ``--budget-s`` stops adding rows when the
time is spent (default 450 s, so that a run stays under 8 minutes). ``--device cpu --tiny``
(width 0.25, 256 px, batch 2, one timed step, no compile) checks on a CPU that the script runs.
Goals on an H100/H200-class GPU: teacher >= 25 img/s with bf16; bf16 + channels_last >= 1.5x fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.common import environment_lines, markdown_table, synthetic_boxes
from msadkit.config import load_config
from msadkit.distill.distiller import Distiller
from msadkit.distill.msad import MSADFeatureLoss
from msadkit.engine.train.compile import compile_trained_model
from msadkit.modeling.registry import build_model

MODES = ("fp32", "bf16", "bf16_cl", "bf16_cl_compile")
# Random init, no checkpoint files: BN instead of SyncBN (one process), no ImageNet weights.
COMMON = ["model.backbone.weights=null", "model.backbone.norm=BN", "model.num_classes=80", "model.fpn.out_channels=256"]


def _round_up(value: int, multiple: int = 256) -> int:
    return -(-value // multiple) * multiple


def build(kind: str, width: float, *, tiny: bool) -> nn.Module:
    """``teacher``, ``student`` (a distiller around a fresh teacher), ``fcos_high`` or ``student_eval``."""
    overrides = COMMON + [f"model.backbone.width={width}"] + (["model.fpn.out_channels=64"] if tiny else [])
    torch.manual_seed(0)
    if kind == "teacher":
        return build_model(load_config("msad/msad_teacher_w025", overrides))
    if kind == "fcos_high":
        return build_model(load_config("msad/fcos_high_w025", overrides))
    student = build_model(load_config("msad/msad_student_w025", overrides + ["distill.teacher=null"]))
    if kind == "student_eval":
        return student
    teacher = build_model(load_config("msad/msad_teacher_w025", overrides))
    channels = 64 if tiny else 256
    return Distiller(student=student, teacher=teacher,
                     losses=[MSADFeatureLoss(student_channels=channels, teacher_channels=channels, ramp_iters=0)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, mode: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if mode != "fp32" else contextlib.nullcontext()


def prepare(kind: str, width: float, mode: str, device: torch.device, tiny: bool) -> nn.Module:
    model = build(kind, width, tiny=tiny).to(device)
    if isinstance(model, Distiller):
        model.teacher.to(device)
    if "cl" in mode:
        model = model.to(memory_format=torch.channels_last)
        if isinstance(model, Distiller):
            model.teacher.to(memory_format=torch.channels_last)
    if mode.endswith("compile"):
        compile_trained_model(model, device_type=device.type)
    return model


def time_calls(call: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_row(kind: str, width: float, batch: int, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    height, width_px = args.size
    model = prepare(kind, width, mode, device, args.tiny).train()
    padded = (_round_up(height), _round_up(width_px))
    images = torch.randn(batch, 3, *padded, device=device)
    if "cl" in mode:
        images = images.contiguous(memory_format=torch.channels_last)
    sizes = [(height, width_px)] * batch
    targets = [{k: v.to(device) for k, v in t.items()} for t in synthetic_boxes(batch, height, width_px, 8, 80)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, mode):
            losses = model(images, sizes, targets)
        sum(losses.values()).backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_calls(step, device, args.warmup, args.iters)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, optimizer, images
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"model": f"msad_{kind}", "width": width, "batch": batch, "mode": mode,
            "input": f"{height}x{width_px} (padded {padded[0]}x{padded[1]})",
            "img_per_s": batch / seconds, "step_ms": 1e3 * seconds, "peak_gib": peak}


def eval_rows(width: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    height, width_px = args.size
    padded = (_round_up(height), _round_up(width_px))
    images = torch.randn(1, 3, *padded, device=device).contiguous(memory_format=torch.channels_last)
    rows = []
    for kind in ("fcos_high", "student_eval"):
        model = prepare(kind, width, "bf16_cl", device, args.tiny).eval()

        def infer() -> None:
            with torch.inference_mode(), _autocast(device, "bf16"):
                model(images, [(height, width_px)])

        seconds = time_calls(infer, device, args.warmup, args.iters)
        rows.append({"model": "fcos_high_res" if kind == "fcos_high" else "msad_student_low_res", "width": width,
                     "batch": 1, "mode": "eval bf16_cl", "input": f"{height}x{width_px}", "latency_ms": 1e3 * seconds})
    rows[1]["low_over_high"] = rows[1]["latency_ms"] / rows[0]["latency_ms"]
    return rows


def table_cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """``row[key]`` formatted, else "-"; a row that ran out of memory shows its error under img/s."""
    if row.get(key) is not None:
        return format(row[key], fmt)
    return row.get("error", "-") if key == "img_per_s" else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: width 0.25, 256 px, batch 2, no compile")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per row (default 10; tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 3; tiny 0)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop adding rows after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("gpu_throughput.json"))
    args = parser.parse_args()
    args.iters = args.iters if args.iters is not None else (1 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    args.size = (256, 256) if args.tiny else (800, 1333)
    widths, batches = ((0.25,), (2,)) if args.tiny else ((1.0, 0.25), (2, 8))
    modes = MODES[:3] if args.tiny else MODES
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device; run with --device cpu --tiny to check the script")
    torch.backends.cudnn.benchmark = True
    started = time.perf_counter()
    header = environment_lines() + ([f"gpu: {torch.cuda.get_device_name(device)}"] if device.type == "cuda" else [])
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    plan = [(k, w, b, m) for k in ("teacher", "student") for w in widths for b in batches for m in modes]
    for kind, width, batch, mode in plan:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(f"{kind} w{width} b{batch} {mode}")
            continue
        try:
            rows.append(train_row(kind, width, batch, mode, args))
        except torch.OutOfMemoryError:
            rows.append({"model": f"msad_{kind}", "width": width, "batch": batch, "mode": mode, "error": "out of memory"})
            torch.cuda.empty_cache()
        print(f"   {rows[-1]}", flush=True)
    for width in widths:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(f"eval latency w{width}")
            continue
        rows.extend(eval_rows(width, args))

    columns = ["model", "width", "batch", "mode", "input", "img/s", "step ms", "peak GiB", "eval latency ms"]
    numbers = [("img_per_s", ".1f"), ("step_ms", ".0f"), ("peak_gib", ".2f"), ("latency_ms", ".1f")]
    print("\n" + markdown_table(columns, [
        [r["model"], r["width"], r["batch"], r["mode"], r.get("input", "-"), *(table_cell(r, k, f) for k, f in numbers)]
        for r in rows
    ]))
    if skipped:
        print(f"skipped (time budget {args.budget_s:.0f} s): {', '.join(skipped)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    args.out.write_text(json.dumps({"environment": header, "rows": rows, "skipped": skipped}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
