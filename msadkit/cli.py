"""The ``msadkit`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from msadkit.errors import MsadkitError

__all__ = ["main", "build_parser"]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector, teacher or student from a config",
        description="Train from a YAML config (a path or a packaged name) plus key=value overrides.",
    )
    p.add_argument("config", help="YAML config file or packaged config name (see `msadkit configs`)")
    p.add_argument("overrides", nargs="*", help="config overrides such as solver.max_iter=300")
    p.add_argument("--output-dir", help="run folder (overrides output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP of a run folder's weights on its validation split")
    p.add_argument("run_dir", help="run folder written by `msadkit train`")
    p.add_argument("--weights", help="weights to evaluate instead of run_dir/model_final.pth")
    p.add_argument("--device", default="cpu")
    p.add_argument("--branch", choices=("fused", "high", "low"), help="MSAD teacher branch to evaluate")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="generate the embedded synthetic multi-scale dataset")
    s.add_argument("--out", required=True, help="dataset folder")
    s.add_argument("--num-train", type=int, default=256)
    s.add_argument("--num-val", type=int, default=64)
    s.add_argument("--num-unlabeled", type=int, default=0)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="backbone and total GFLOPs (and MSAD capacity) at the configured input size")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--height", type=int, help="input height (default: data.test_short_side)")
    p.add_argument("--width", type=int, help="input width (default: data.test_max_size)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msadkit", description="Knowledge distillation for object detection.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_data(sub)
    _add_flops(sub)
    sub.add_parser("configs", help="list the packaged configs")
    return parser


def _train(args: argparse.Namespace) -> int:
    from msadkit.config import load_config
    from msadkit.engine.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    run_dir = train(config, resume=args.resume, evaluate=not args.no_eval)
    print(f"run folder: {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from msadkit.engine.evaluation import format_ap_table
    from msadkit.engine.trainer import evaluate_run

    overrides = {"model": {"msad": {"eval_branch": args.branch}}} if args.branch else None
    metrics = evaluate_run(args.run_dir, weights=args.weights, device=args.device, overrides=overrides)
    print(format_ap_table(metrics))
    return 0


def _data(args: argparse.Namespace) -> int:
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


def _flops(args: argparse.Namespace) -> int:
    from msadkit.analysis.flops import config_flops
    from msadkit.config import load_config

    config = load_config(args.config, args.overrides)
    print(json.dumps(config_flops(config, height=args.height, width=args.width), indent=2))
    return 0


def _configs(args: argparse.Namespace) -> int:
    from msadkit.config import list_packaged_configs

    print("\n".join(list_packaged_configs()))
    return 0


COMMANDS = {"train": _train, "evaluate": _evaluate, "data": _data, "flops": _flops, "configs": _configs}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one message and return status 2."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        # Overrides may come after options (`train CFG --resume a.b=1`); anything else is an error.
        if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except MsadkitError as exc:
        if args.verbose:
            raise
        print(f"msadkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
