"""The ``msadkit`` command line: sub-commands are the modules of :mod:`msadkit.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType
from typing import Sequence

import msadkit.commands
from msadkit.errors import MsadkitError

__all__ = ["main", "build_parser"]


def _command_modules() -> dict[str, ModuleType]:
    modules = {}
    for info in sorted(pkgutil.iter_modules(msadkit.commands.__path__), key=lambda m: m.name):
        modules[info.name.replace("_", "-")] = importlib.import_module(f"msadkit.commands.{info.name}")
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msadkit", description="Knowledge distillation for object detection.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules().values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one message and return status 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options (`train CFG --resume a.b=1`); anything else is an error.
        if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # force: a second call in the same process (tests, notebooks) writes to the current stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    try:
        return _command_modules()[args.command].run(args)
    except MsadkitError as exc:
        if args.verbose:
            raise
        print(f"msadkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
