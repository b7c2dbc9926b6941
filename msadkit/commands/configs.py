"""`msadkit configs`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "configs",
        help="list the packaged configs with a one-line description",
        description="The packaged configs (names for `msadkit train NAME`), each with the first sentence of its "
        "opening comment. The base_* files that other configs inherit are hidden unless --all is given.",
    )
    p.add_argument("--all", action="store_true", help="also list the base_* configs that others inherit (marked [base])")


def run(args: argparse.Namespace) -> int:
    from msadkit.config.catalog import is_base_config, packaged_config_catalog

    catalog = packaged_config_catalog(include_bases=args.all)
    width = max((len(name) for name, _ in catalog), default=0)
    for name, description in catalog:
        mark = "[base] " if is_base_config(name) else ""
        print(f"{name:<{width}}  {mark}{description}".rstrip())
    return 0
