"""`msadkit evaluate`."""

from __future__ import annotations

import argparse

from msadkit.utils.device import DEVICE_HELP


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="COCO AP of a run folder's weights on its validation split")
    p.add_argument("run_dir", help="run folder written by `msadkit train`")
    p.add_argument("settings", nargs="*", metavar="key=value",
                   help="config changes for this evaluation, such as data.synthetic.num_val=384 (needs --output-dir)")
    p.add_argument("--output-dir", help="write config.yaml, eval.json and detections_val.json here instead of "
                   "run_dir: an evaluation folder that `msadkit` reads like a run folder")
    p.add_argument("--weights", help="weights to evaluate instead of run_dir/model_final.pth")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="also resample the validation images N times for each metric's evaluation SE "
                   "(bootstrap_ap.json next to eval.json)")
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
    from msadkit.errors import ConfigError
    from msadkit.utils.device import resolve_device

    if args.bootstrap and args.bootstrap < 2:
        raise ConfigError(f"--bootstrap must be at least 2 resamples, got {args.bootstrap}")
    if args.bootstrap and (args.branch or args.weights):
        raise ConfigError("--bootstrap resamples the run's own evaluation (eval.json); drop --branch and --weights")
    overrides: dict = {"model": {"msad": {"eval_branch": args.branch}}} if args.branch else {}
    if args.backend:
        check_backend(args.backend, argument="--backend")
        overrides["trainer"] = {"eval_backend": args.backend}
    # A branch or another checkpoint gets its own file; eval.json stays the run's own result.
    name = f"eval_{args.branch}.json" if args.branch else ("eval_weights.json" if args.weights else "eval.json")
    device = resolve_device(args.device)
    metrics = evaluate_run(args.run_dir, weights=args.weights, device=device, overrides=overrides,
                           settings=args.settings, name=name, output_dir=args.output_dir)
    print(format_ap_table(metrics))
    if args.bootstrap:
        from msadkit.analysis.bootstrap_ap import cached_bootstrap

        result = cached_bootstrap(args.output_dir or args.run_dir, args.bootstrap)
        print(result.evaluation_se())
    return 0
