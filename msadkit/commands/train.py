"""`msadkit train`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
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


def run(args: argparse.Namespace) -> int:
    from msadkit.config import load_config
    from msadkit.engine.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    run_dir = train(config, resume=args.resume, evaluate=not args.no_eval)
    print(f"run folder: {run_dir}")
    return 0
