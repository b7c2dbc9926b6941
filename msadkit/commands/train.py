"""`msadkit train`."""

from __future__ import annotations

import argparse
import shlex
import sys


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


def resume_command(args: argparse.Namespace, run_dir: str) -> str:
    """The ``msadkit train ... --resume`` command line that continues the run of ``args`` in ``run_dir``."""
    command = ["msadkit", "train", args.config]
    # --output-dir names the folder; an output_dir= override would say it twice.
    command += [item for item in args.overrides if not item.startswith("output_dir=")]
    if args.iterations is not None:
        command += ["--iterations", str(args.iterations)]
    command += ["--output-dir", str(run_dir)]
    if args.no_eval:
        command.append("--no-eval")
    command.append("--resume")
    return shlex.join(command)


def run(args: argparse.Namespace) -> int:
    from msadkit.config import load_config
    from msadkit.config.run_length import run_length_overrides
    from msadkit.engine.train.graceful_stop import TrainingInterrupted
    from msadkit.engine.train.trainer import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.iterations is not None:
        # Every count of iterations (warm-up, LR steps, KD ramps, periods) follows the new length.
        overrides += run_length_overrides(load_config(args.config, overrides), args.iterations, argument="--iterations")
    config = load_config(args.config, overrides)
    try:
        run_dir = train(config, resume=args.resume, evaluate=not args.no_eval)
    except TrainingInterrupted as stop:
        # Every DDP process stops; the first one says how to go on.
        if stop.is_global_zero:
            print(f"msadkit train: {stop}; resume with: {resume_command(args, config['output_dir'])}", file=sys.stderr)
        # 128 + the signal, what a shell reports for a process that signal ended (143, 130).
        return stop.exit_status
    print(f"run folder: {run_dir}")
    return 0
