"""`msadkit flops`."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="backbone and total GFLOPs (and MSAD capacity) at the configured input size")
    p.add_argument("--config", required=True, help="YAML config file or packaged config name (see `msadkit configs`)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides such as model.resolution=low")
    p.add_argument("--height", type=int, help="input height (default: data.test_short_side)")
    p.add_argument("--width", type=int, help="input width (default: data.test_max_size)")


def run(args: argparse.Namespace) -> int:
    from msadkit.analysis.model_flops import config_flops
    from msadkit.config import load_config

    config = load_config(args.config, args.overrides)
    print(json.dumps(config_flops(config, height=args.height, width=args.width), indent=2))
    return 0
