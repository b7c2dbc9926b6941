"""`msadkit data`."""

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


def run(args: argparse.Namespace) -> int:
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
