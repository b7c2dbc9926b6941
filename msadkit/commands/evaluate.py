"""`msadkit evaluate`."""

from __future__ import annotations

import argparse

from msadkit.utils.device import DEVICE_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP of a run folder's weights on its validation split")
    p.add_argument("run_dir", help="run folder written by `msadkit train`")
    p.add_argument("--weights", help="weights to evaluate instead of run_dir/model_final.pth")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--branch",
        choices=("fused", "high", "low"),
        help="MSAD teacher branch to evaluate (written to eval_<branch>.json)",
    )
    p.add_argument(
        "--backend",
        metavar="{pycocotools,faster_coco_eval}",
        help="COCO evaluator (default: the run's trainer.eval_backend); faster_coco_eval needs "
        "`pip install msadkit[fast-eval]` and gives the same AP",
    )


def run(args: argparse.Namespace) -> int:
    from msadkit.engine.evaluation.coco_evaluation import check_backend, format_ap_table
    from msadkit.engine.evaluation.run_evaluation import evaluate_run
    from msadkit.utils.device import resolve_device

    overrides: dict = {"model": {"msad": {"eval_branch": args.branch}}} if args.branch else {}
    if args.backend:
        check_backend(args.backend, argument="--backend")
        overrides["trainer"] = {"eval_backend": args.backend}
    # A branch or another checkpoint gets its own file; eval.json stays the run's own result.
    name = f"eval_{args.branch}.json" if args.branch else ("eval_weights.json" if args.weights else "eval.json")
    device = resolve_device(args.device)
    metrics = evaluate_run(args.run_dir, weights=args.weights, device=device, overrides=overrides, name=name)
    print(format_ap_table(metrics))
    return 0
