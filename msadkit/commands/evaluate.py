"""`msadkit evaluate`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP of a run folder's weights on its validation split")
    p.add_argument("run_dir", help="run folder written by `msadkit train`")
    p.add_argument("--weights", help="weights to evaluate instead of run_dir/model_final.pth")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--branch",
        choices=("fused", "high", "low"),
        help="MSAD teacher branch to evaluate (written to eval_<branch>.json)",
    )


def run(args: argparse.Namespace) -> int:
    from msadkit.engine.evaluation import format_ap_table
    from msadkit.engine.run_evaluation import evaluate_run

    overrides = {"model": {"msad": {"eval_branch": args.branch}}} if args.branch else None
    # A branch or another checkpoint gets its own file; eval.json stays the run's own result.
    name = f"eval_{args.branch}.json" if args.branch else ("eval_weights.json" if args.weights else "eval.json")
    metrics = evaluate_run(args.run_dir, weights=args.weights, device=args.device, overrides=overrides, name=name)
    print(format_ap_table(metrics))
    return 0
