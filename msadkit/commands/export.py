"""`msadkit export`: a finished run as one deployable ONNX or TorchScript file."""

from __future__ import annotations

import argparse

from msadkit.commands.predict import BRANCHES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained run as one ONNX or TorchScript file (pre-processing and NMS inside)",
        description=(
            "Export a finished run's detector with its test-time resize, pixel normalisation, padding, the "
            "low-resolution student's 0.5x step and NMS in one graph. Input: one RGB image (1, 3, H, W) float32 "
            "in 0..255, any H and W. Outputs: boxes (D, 4) x1 y1 x2 y2 in input pixels, scores (D,), labels (D,) "
            "(class indices 0..K-1). The file is written atomically. A TorchScript file loads with "
            "torch.jit.load after `import torchvision` (its NMS operator)."
        ),
    )
    p.add_argument("run", help="run folder (config.yaml + model_final.pth) or its model_final.pth")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="file format to write")
    p.add_argument("--out", required=True, help="the file to write (e.g. student.onnx or student.pt)")
    p.add_argument(
        "--branch", choices=BRANCHES, help="MSAD teacher only: the branch to export (default its eval_branch)"
    )


def run(args: argparse.Namespace) -> int:
    from msadkit.engine.inference.export import check_writable, export_model
    from msadkit.engine.inference.predict import load_predictor

    check_writable(args.out)  # before the minutes a large model takes to trace
    model, config = load_predictor(args.run, branch=args.branch, device="cpu")
    path = export_model(model, config, args.format, args.out)
    print(f"{config['model']['arch']} exported as {args.format} to {path}")
    return 0
