"""`msadkit config show|diff`: the resolved config of a name, a file or a run folder, and what two differ in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["add_parser", "run", "resolve_any_config", "config_differences"]

_SOURCE_HELP = "packaged config name (see `msadkit configs`), YAML file, or run folder (its config.yaml)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print a resolved config, or the keys in which two configs differ",
        description="Resolve configs the way `msadkit train` does (defaults, _base_ chain, overrides).",
    )
    actions = p.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("name", help=_SOURCE_HELP)
    show.add_argument("overrides", nargs="*", help="key=value overrides applied first, as `msadkit train` does")
    diff = actions.add_parser("diff", help="print the dotted keys whose values differ, with both values")
    diff.add_argument("first", help=_SOURCE_HELP)
    diff.add_argument("second", help=_SOURCE_HELP)


def resolve_any_config(source: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The full config of a packaged name, a YAML file, or a run folder (its saved ``config.yaml``
    on today's defaults, the way a run is evaluated).

    Raises:
        ConfigError: the source does not exist, or a key or override is invalid.
    """
    from msadkit.config import load_config
    from msadkit.config.loader import complete_config
    from msadkit.errors import ConfigError
    from msadkit.utils.run_folder import read_run_config

    if Path(source).is_dir():
        if overrides:
            raise ConfigError(f"{source} is a run folder: its config is fixed, overrides do not apply")
        return complete_config(read_run_config(source))
    return load_config(source, overrides)


def config_differences(
    first: Mapping[str, Any], second: Mapping[str, Any], prefix: str = ""
) -> Iterator[tuple[str, Any, Any]]:
    """``(dotted_key, first_value, second_value)`` for every leaf that differs, in ``first``'s key
    order then ``second``'s new keys; a key one side lacks has the value :data:`MISSING`."""
    for key in [*first, *(k for k in second if k not in first)]:
        a, b = first.get(key, MISSING), second.get(key, MISSING)
        dotted = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from config_differences(a, b, f"{dotted}.")
        elif a != b or type(a) is not type(b):
            yield dotted, a, b


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING = _Missing()


def _flow(value: Any) -> str:
    """One-line text of a value: JSON for lists/mappings/None/booleans, plain for numbers and text."""
    if value is MISSING:
        return repr(value)
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)


def run(args: argparse.Namespace) -> int:
    from msadkit.config import dump_config

    if args.config_command == "show":
        print(dump_config(resolve_any_config(args.name, list(args.overrides))), end="")
        return 0
    differences = list(config_differences(resolve_any_config(args.first), resolve_any_config(args.second)))
    if not differences:
        print(f"{args.first} and {args.second} resolve to the same config")
        return 0
    width = max(len(key) for key, _, _ in differences)
    print(f"{'key':<{width}}  {args.first}  ->  {args.second}")
    for key, a, b in differences:
        print(f"{key:<{width}}  {_flow(a)}  ->  {_flow(b)}")
    return 0
