"""`msadkit check-weights`: verify a downloaded slimmable multi-width checkpoint and print its SHA-256."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "check-weights",
        help="verify the slimmable ResNet-50 checkpoint (layout, the four widths, shapes) and print its sha256",
        description=(
            "Check that s_resnet50_0.25_0.5_0.75_1.0.pt (see docs/pretrained_weights.md) loads strictly at widths "
            "0.25, 0.5, 0.75 and 1.0 with finite values, and print its SHA-256. No checksum is published for the "
            "file: record the printed one and compare it on every machine the file is copied to."
        ),
    ).add_argument("file", help="the checkpoint file to check")


def run(args: argparse.Namespace) -> int:
    from msadkit.errors import CheckpointError
    from msadkit.modeling.backbones.slimmable_check import check_slimmable_checkpoint

    report = check_slimmable_checkpoint(args.file)
    print(f"file: {report.path}")
    print(f"tensors: {report.num_tensors}")
    for width, problem in report.widths.items():
        print(f"width {width:<4}: {'ok' if problem is None else 'FAILS'}")
    if report.non_finite:
        print(f"non-finite values in: {', '.join(report.non_finite[:10])}")
    print(f"sha256: {report.sha256}")
    if not report.ok:
        failing = {width: problem for width, problem in report.widths.items() if problem}
        reasons = []
        if failing:
            # The first width's message lists the keys; the others usually repeat it.
            first = next(iter(failing))
            reasons.append(f"fails at width(s) {', '.join(map(str, failing))}; at width {first}: {failing[first]}")
        if report.non_finite:
            reasons.append(f"{len(report.non_finite)} tensor(s) hold NaN or infinity")
        raise CheckpointError(f"{report.path} is not a usable slimmable checkpoint: " + "; ".join(reasons))
    print("record this sha256: no checksum is published for the official file")
    return 0
