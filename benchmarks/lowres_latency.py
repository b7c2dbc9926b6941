"""Inference latency of a low-resolution FCOS against the high-resolution one at the same width.

Both detectors come from the packaged ``fcos_demo`` config (slimmable ResNet-50, FPN, FCOS head)
with ``model.backbone.width`` set and ``model.resolution`` high or low. The low-resolution model
sees the nearest 0.5x copy of the same padded batch and runs its head on p2..p6, which have the
sizes of the high-resolution p3..p7: only the bottom-up network (and the FPN's input side) gets
4x cheaper, so the backbone FLOP ratio 0.25 is a lower bound that the whole detector cannot reach.

A latency is one call of the whole detector in eval mode under ``torch.inference_mode()``:
input checks, downsampling, backbone, FPN, head and post-processing (score threshold, top-k,
box decoding, class-wise NMS). The two resolutions alternate within each round; the figure is the
median over rounds of the per-round ratio low / high.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import (
    add_common_arguments,
    interleaved_times,
    markdown_table,
    median_ms,
    ratio_summary,
    start_benchmark,
    target_verdict,
    timed_rounds,
)
from msadkit.analysis.model_flops import config_flops
from msadkit.config import load_config
from msadkit.modeling.registry import build_model

TARGET_RATIO = 0.35


def detector_config(width: float, resolution: str, size: int, score_thresh: float | None) -> dict:
    overrides = [f"model.backbone.width={width}", f"model.resolution={resolution}"]
    if score_thresh is not None:
        overrides.append(f"model.fcos.score_thresh={score_thresh}")
    # The FLOP count pads the input to data.size_divisibility; 256 keeps both resolutions aligned.
    overrides += [f"data.test_short_side={size}", f"data.test_max_size={size}", "data.size_divisibility=256"]
    return load_config("fcos_demo", overrides)


def build_detector(config: dict) -> nn.Module:
    torch.manual_seed(0)
    return build_model(config).eval()


def measure(width: float, batch: int, size: int, *, rounds: int, warmup: int, score_thresh: float | None) -> dict:
    """Latencies and FLOP ratios of the low- and high-resolution detectors for one setting."""
    configs = {res: detector_config(width, res, size, score_thresh) for res in ("high", "low")}
    models = {res: build_detector(cfg) for res, cfg in configs.items()}
    flops = {res: config_flops(cfg) for res, cfg in configs.items()}
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    image_sizes = [(size, size)] * batch
    detections: dict[str, int] = {}

    def run(resolution: str):
        def call() -> None:
            with torch.inference_mode():
                results = models[resolution](images, image_sizes)
            detections[resolution] = sum(len(r["scores"]) for r in results)

        return call

    print(f"-- width {width}, batch {batch} x 3 x {size} x {size}")
    times = interleaved_times({"high": run("high"), "low": run("low")}, rounds=rounds, warmup=warmup)
    per_round, of_medians = ratio_summary(times, "low", "high")
    return {
        "width": width,
        "batch": batch,
        "high_ms": median_ms(times["high"]),
        "low_ms": median_ms(times["low"]),
        "ratio": per_round,
        "ratio_of_medians": of_medians,
        "backbone_flop_ratio": flops["low"]["backbone_gflops"] / flops["high"]["backbone_gflops"],
        "total_flop_ratio": flops["low"]["total_gflops"] / flops["high"]["total_gflops"],
        "detections": dict(detections),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=512, help="square input side, a multiple of 256")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.25])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--score-thresh",
        type=float,
        default=None,
        help="override model.fcos.score_thresh; an untrained head scores about 0.01 everywhere, so the "
        "config's 0.05 leaves post-processing nothing to do, while 0 makes it keep the top 1000 "
        "candidates per level and run NMS on them",
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.widths, args.batches = 256, [0.25], [1]
    rounds = timed_rounds(args, 5)
    if args.size % 256:
        parser.error("--size must be a multiple of 256 so that both resolutions need no extra padding")
    start_benchmark("FCOS inference latency: low resolution / high resolution", args.threads)
    config = load_config("fcos_demo")
    print(
        f"   fcos_demo: FPN {config['model']['fpn']['out_channels']} channels, K={config['model']['num_classes']}, "
        f"score_thresh {args.score_thresh if args.score_thresh is not None else config['model']['fcos']['score_thresh']}"
    )

    rows = [
        measure(width, batch, args.size, rounds=rounds, warmup=args.warmup, score_thresh=args.score_thresh)
        for width in args.widths
        for batch in args.batches
    ]
    columns = ["width", "batch", "high ms", "low ms", "low/high", "backbone FLOPs low/high", "model FLOPs low/high",
               "detections high/low"]
    print(markdown_table(columns, [
        [row["width"], row["batch"], f"{row['high_ms']:.0f}", f"{row['low_ms']:.0f}", f"{row['ratio']:.3f}",
         f"{row['backbone_flop_ratio']:.3f}", f"{row['total_flop_ratio']:.3f}",
         f"{row['detections']['high']}/{row['detections']['low']}"]
        for row in rows
    ]))
    for row in rows:
        print(
            f"RATIO low/high latency (width {row['width']}, batch {row['batch']}) = {row['ratio']:.3f} "
            f"({target_verdict(row['ratio'], TARGET_RATIO)}; backbone FLOP bound {row['backbone_flop_ratio']:.3f}, "
            f"whole-model FLOP bound {row['total_flop_ratio']:.3f})"
        )


if __name__ == "__main__":
    main()
