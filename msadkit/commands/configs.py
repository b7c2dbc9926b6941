"""`msadkit configs`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("configs", help="list the packaged configs")


def run(args: argparse.Namespace) -> int:
    from msadkit.config import list_packaged_configs

    print("\n".join(list_packaged_configs()))
    return 0
