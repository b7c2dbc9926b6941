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
    p.add_argument(
        "--iterations",
        type=int,
        metavar="N",
        help="train for N iterations, scaling solver.max_iter, the warm-up and the LR steps together "
        "(a short run keeps the schedule's shape; solver.max_iter=N alone keeps the full warm-up and steps)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")


def run(args: argparse.Namespace) -> int:
    from msadkit.config import load_config
    from msadkit.config.run_length import scaled_solver
    from msadkit.engine.train.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.iterations is not None:
        solver = scaled_solver(load_config(args.config, overrides)["solver"], args.iterations, argument="--iterations")
        overrides += [f"solver.{key}={value}" for key, value in solver.items()]
    config = load_config(args.config, overrides)
    run_dir = train(config, resume=args.resume, evaluate=not args.no_eval)
    print(f"run folder: {run_dir}")
    return 0
