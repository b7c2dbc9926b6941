"""`msadkit predict`: a finished run's detections on image files, drawn and as a COCO results json."""

from __future__ import annotations

import argparse

from msadkit.utils.device import DEVICE_HELP

BRANCHES = ("fused", "high", "low")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="detect objects on image files with a trained run; draw them and write detections.json",
        description=(
            "Run a finished run's detector (its test resize, its branch or 0.5x input path) over image files and "
            "folders. Writes OUT/<name>.png per image with boxes, class names and scores drawn, and "
            "OUT/detections.json in COCO results format (image_file, image_id, category_id, bbox [x, y, w, h] in "
            "original pixels, score). An image that cannot be read is named on stderr, the others are still "
            "processed, and the exit status is 1."
        ),
    )
    p.add_argument("run", help="run folder (config.yaml + model_final.pth) or its model_final.pth")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders of images (not recursive)")
    p.add_argument("--out", required=True, help="folder for the drawn PNGs and detections.json (created)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="minimum score of a kept detection (default 0.5)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--branch", choices=BRANCHES, help="MSAD teacher only: the branch that detects (default its eval_branch)"
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default trainer.eval_batch_size)")


def run(args: argparse.Namespace) -> int:
    import sys

    from msadkit.engine.inference.predict import DETECTIONS_NAME, load_predictor, predict_images
    from msadkit.errors import ConfigError
    from msadkit.utils.device import resolve_device

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)
    model, config = load_predictor(args.run, branch=args.branch, device=device)
    summary = predict_images(
        model,
        config,
        args.images,
        args.out,
        score_threshold=args.score_threshold,
        device=device,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
    )
    for path, why in summary.unreadable:
        print(f"msadkit predict: error: cannot read image {path}: {why}", file=sys.stderr)
    print(
        f"{summary.num_detections} detections on {len(summary.drawn)} images: drawn in {summary.out_dir}, "
        f"listed in {summary.out_dir / DETECTIONS_NAME}"
    )
    return 1 if summary.unreadable else 0
