"""`msadkit pretrain`: the slimmable ResNet-50 pretrained as a classifier on synthetic training crops.

Writes (or reuses) a checkpoint in the official slimmable layout that configs load with
``model.backbone.weights=<file>``; see :mod:`msadkit.engine.train.pretrain`.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from msadkit.engine.train.pretrain_settings import PretrainSettings

    d = PretrainSettings()
    p = sub.add_parser(
        "pretrain",
        help="pretrain the slimmable ResNet-50 as a classifier on synthetic training crops (cached)",
        description="Train the slimmable ResNet-50 at one width to classify crops of the synthetic generator's "
        "training stream (never validation images), and write its weights in the official slimmable "
        "multi-width layout, for model.backbone.weights. The file is cached under the msadkit cache "
        "($MSADKIT_CACHE or ~/.cache/msadkit) by its settings and reused; --out copies it elsewhere.",
    )
    p.add_argument("--out", help="also write the checkpoint here (default: only the cache)")
    p.add_argument("--force", action="store_true", help="train again even if the cache holds this checkpoint")
    p.add_argument("--width", type=float, default=d.width, help=f"slimmable width (default {d.width})")
    p.add_argument("--num-images", type=int, default=d.num_images, help=f"training-stream scenes (default {d.num_images})")
    p.add_argument("--image-size", type=int, default=d.image_size, help=f"scene side in pixels (default {d.image_size})")
    p.add_argument("--crop-size", type=int, default=d.crop_size, help=f"crop side in pixels (default {d.crop_size})")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"SGD steps (default {d.iterations})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"crops per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"synthetic dataset and training seed (default {d.seed})")


def run(args: argparse.Namespace) -> int:
    import shutil

    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path, pretrain_backbone, save_pretrained
    from msadkit.utils.atomic import atomic_write

    settings = PretrainSettings(
        width=args.width, num_images=args.num_images, image_size=args.image_size, crop_size=args.crop_size,
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
    )
    settings.check()
    path = cached_pretrained_path(settings)
    if path.is_file() and not args.force:
        print(f"pretrained backbone (cached): {path}")
    else:
        model, report = pretrain_backbone(settings, log=lambda message: print(message, flush=True))
        save_pretrained(model, report, path)
        accuracy = report["holdout_accuracy"]
        print(f"held-out crop accuracy: {accuracy:.1%}" if accuracy is not None else "no held-out crops")
        print(f"pretrained backbone: {path} ({report['seconds']:.0f} s)")
    if args.out:
        with open(path, "rb") as source, atomic_write(args.out) as target:
            shutil.copyfileobj(source, target)
        print(f"copied to {args.out}")
    print(f"use it with: model.backbone.weights={args.out or path}")
    return 0
