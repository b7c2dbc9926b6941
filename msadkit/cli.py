"""The ``msadkit`` command line: sub-commands are the modules of :mod:`msadkit.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import select
import sys
from types import ModuleType
from typing import Sequence

import msadkit.commands
from msadkit.errors import MsadkitError

__all__ = ["main", "build_parser"]

# The status of a command whose reader closed the pipe (`msadkit configs | head -1`). A Unix filter
# dies of SIGPIPE there, which a shell reports as 128 + 13 = 141; returning the same number keeps
# `set -o pipefail` scripts and callers that check statuses seeing what `seq`, `cat` or `grep` give,
# and tells them the output was cut short, which 0 would hide. The shell prints nothing for it.
SIGPIPE_EXIT_STATUS = 141


def _command_modules() -> dict[str, ModuleType]:
    modules = {}
    for info in sorted(pkgutil.iter_modules(msadkit.commands.__path__), key=lambda m: m.name):
        modules[info.name.replace("_", "-")] = importlib.import_module(f"msadkit.commands.{info.name}")
    return modules


def _installed_version() -> str:
    """The version recorded by the installer (the wheel's or the editable install's metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("msadkit")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msadkit", description="Knowledge distillation for object detection.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"msadkit {_installed_version()}",
                        help="print the installed msadkit version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _command_modules().values():
        module.add_parser(sub)
    return parser


def _stdout_is_a_closed_pipe() -> bool:
    """Whether standard output is a pipe (or socket) whose reader has gone away."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a capture object, or closed
        return False
    if not hasattr(select, "poll"):  # Windows: no poll; a broken pipe there can only be stdout's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # The write end of a pipe without a reader always reports POLLERR.
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point standard output at the null device, so the interpreter's final flush of what is still
    buffered does not fail again (the recipe of Python's ``signal`` documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; user errors print one message and return status 2.

    When the reader of standard output goes away (``msadkit configs | head -1``) the command stops
    without a traceback and returns 141, the status a shell shows for a filter ended by SIGPIPE.
    """
    try:
        status = _main(argv)
        # Buffered output still waiting for a pipe fails here, inside the try, not at exit.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # A broken pipe elsewhere (a socket, a subprocess) is a real error and keeps its traceback.
        if not _stdout_is_a_closed_pipe():
            raise
        _silence_stdout()
        return SIGPIPE_EXIT_STATUS


def _main(argv: Sequence[str] | None) -> int:
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
