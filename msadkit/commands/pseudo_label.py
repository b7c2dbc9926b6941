"""`msadkit pseudo-label`: label unlabeled images with a trained teacher (semi-supervised ADL/SAD)."""

from __future__ import annotations

import argparse
import sys

from msadkit.utils.device import DEVICE_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pseudo-label",
        help="write a COCO json of a trained detector's detections on unlabeled images",
        description=(
            "Run a trained detector (the teacher) over every image of a folder or of a COCO image-info json "
            "and write its detections above --score-threshold as a COCO json. Use it as data.pseudo_labels_json "
            "(with data.pseudo_labels_images = the image folder) of a distillation run."
        ),
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides of the --config file (e.g. data.test_short_side=600)"
    )
    p.add_argument("--teacher", help="the teacher's run folder (config.yaml + model_final.pth) or its model_final.pth")
    p.add_argument("--config", help="the teacher's YAML config (a path or packaged name); needs --weights")
    p.add_argument("--weights", help="the teacher's weights (model_final.pth or a Lightning .ckpt) for --config")
    p.add_argument(
        "--images",
        help="image folder or COCO image-info json; defaults to the unlabeled split of a synthetic dataset",
    )
    p.add_argument("--image-root", help="folder of the file_name entries of an --images json (default: its folder)")
    p.add_argument("--score-threshold", type=float, default=0.4, help="minimum detection score kept (default 0.4)")
    p.add_argument("--out", required=True, help="the COCO json to write")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, help="images per forward pass (default trainer.eval_batch_size)")


def _load_teacher(args: argparse.Namespace):
    """``(model, config)`` from ``--teacher`` or ``--config`` + ``--weights``."""
    from msadkit.config import load_config
    from msadkit.errors import ConfigError
    from msadkit.modeling.loading import load_model_weights, load_run_model
    from msadkit.modeling.registry import build_model

    if args.teacher:
        if args.config or args.weights or args.overrides:
            raise ConfigError(
                "--teacher takes the config and weights from the run; drop --config, --weights and overrides"
            )
        return load_run_model(args.teacher, argument="--teacher")
    if not (args.config and args.weights):
        raise ConfigError("give the teacher as --teacher RUN_DIR, or as --config CONFIG with --weights CHECKPOINT")
    config = load_config(args.config, args.overrides)
    # Every weight comes from the checkpoint; the ImageNet file the run started from is not needed.
    config["model"]["backbone"]["weights"] = None
    model = build_model(config)
    load_model_weights(model, args.weights)
    return model.eval(), config


def run(args: argparse.Namespace) -> int:
    from msadkit.data.build import resolve_data_paths
    from msadkit.engine.semi_supervised.pseudo_labels import generate_pseudo_labels
    from msadkit.errors import ConfigError
    from msadkit.utils.device import resolve_device

    device = resolve_device(args.device)
    model, config = _load_teacher(args)
    images, image_root = args.images, args.image_root
    if images is None:
        paths = resolve_data_paths(config) if config["data"]["dataset"] == "synthetic" else {}
        if "unlabeled_json" not in paths:
            raise ConfigError(
                "--images is required: the teacher's dataset has no unlabeled split "
                "(only a synthetic dataset with data.synthetic.num_unlabeled > 0 has one)"
            )
        images, image_root = paths["unlabeled_json"], paths["unlabeled_images"]
    summary = generate_pseudo_labels(
        model,
        config,
        images,
        args.out,
        image_root=image_root,
        score_threshold=args.score_threshold,
        device=device,
        batch_size=args.batch_size,
    )
    print(
        f"{summary['num_annotations']} pseudo-labels on {summary['num_images']} images written to {summary['path']} "
        f"(images in {summary['image_root']})"
    )
    if summary["num_annotations"] == 0:
        from msadkit.engine.semi_supervised.pseudo_label_check import empty_pseudo_labels_message

        teacher = args.teacher or args.weights
        message = empty_pseudo_labels_message(summary["path"], args.score_threshold, teacher)
        # A warning, not an error: the file is valid; the SAD run refuses it unless told otherwise.
        print(
            f"msadkit pseudo-label: warning: {message}; a SAD run refuses this file unless "
            "data.pseudo_labels_allow_empty=true",
            file=sys.stderr,
        )
    return 0
