"""`msadkit data synth|check`: generate the synthetic dataset, check a COCO json and its images."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="generate the embedded synthetic multi-scale dataset")
    s.add_argument("--out", required=True, help="dataset folder")
    s.add_argument("--num-train", type=int, default=256, help="training images (default 256)")
    s.add_argument("--num-val", type=int, default=64, help="validation images (default 64)")
    s.add_argument("--num-unlabeled", type=int, default=0,
                   help="images of the unlabeled split for semi-supervised ADL/SAD (default 0: no such split)")
    s.add_argument("--image-size", type=int, default=256, help="side of the square images in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same images (default 0)")
    c = data_sub.add_parser(
        "check",
        help="decode every image of a COCO json once and list every problem",
        description="Decode every image a COCO json names, as training sees it (EXIF orientation applied, "
        "16-bit images rescaled), and list every problem in one report: missing files, files that cannot be "
        "decoded (truncated, corrupt), sizes that differ from the json, boxes outside their image. "
        "Exit status 2 when there is a problem, 0 when there is none.",
    )
    c.add_argument("json", help="COCO annotation file")
    c.add_argument("images", help="folder its file_name entries are relative to")
    c.add_argument("--workers", type=int, default=0, help="processes decoding side by side (default 0: this one)")
    c.add_argument("--progress", action="store_true", help="show a progress bar of the decoded images")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        return _check(args)
    from msadkit.data import generate_synthetic_dataset

    dataset = generate_synthetic_dataset(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        num_unlabeled=args.num_unlabeled,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(f"synthetic dataset: {dataset.root} (splits: {', '.join(dataset.splits)})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from msadkit.data.image_check import check_images
    from msadkit.errors import InputError

    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    report = check_images(args.json, args.images, workers=args.workers, progress=args.progress)
    print(report.format())
    return 0 if report.ok else 2
