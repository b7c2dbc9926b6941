"""The ``msadkit ...`` commands written in the documentation, and checks that they would run.

A command is found in two places of a Markdown file:

- a fenced code block: every line whose first word (after ``VAR=value`` assignments) is
  ``msadkit``; a line ending in a backslash continues on the next; ``# ...`` comments are dropped;
  ``<placeholder>`` texts stand for one word. Such a command is complete: it must parse through the
  real argument parser (:func:`msadkit.cli.build_parser`), and the packaged configs it names must
  exist and accept its ``key=value`` overrides.
- an inline code span starting with ``msadkit `` (`` `msadkit evaluate` ``): often only a command
  name in prose, so only its sub-command path and its ``--options`` are checked.

Nothing is executed: parsing only (the sequence test in ``test_readme_sequences.py`` runs them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"])

_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_INLINE_RE = re.compile(r"(?<!`)`(msadkit [^`]+)`(?!`)")
ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_PLACEHOLDER_RE = re.compile(r"<[^<>\n]+>")
# `-p config NAME` (notebook parameters) whose value is a packaged config name.
_CONFIG_PARAMETERS = ("config", "student_config", "teacher_config")


@dataclass(frozen=True)
class DocCommand:
    """One documented command: where it is written and its words after ``msadkit``."""

    document: Path
    line: int
    text: str
    argv: tuple[str, ...]
    complete: bool  # from a code block (a whole command) rather than an inline span

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}: `{self.text}`"


def shell_words(text: str) -> list[str] | None:
    """Shell words of ``text`` with placeholders as single words; None when the quoting is broken."""
    text = _PLACEHOLDER_RE.sub("PLACEHOLDER", text)
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return None


def _msadkit_argv(words: list[str]) -> tuple[str, ...] | None:
    """The arguments after ``msadkit`` when the words run it (after ``VAR=value`` assignments)."""
    index = 0
    while index < len(words) and ASSIGNMENT_RE.match(words[index]):
        index += 1
    if index < len(words) and (words[index] == "msadkit" or words[index].endswith("/bin/msadkit")):
        return tuple(words[index + 1 :])
    return None


def commands_in(document: Path) -> list[DocCommand]:
    """Every ``msadkit`` command of one Markdown file, in reading order."""
    lines = document.read_text(encoding="utf-8").splitlines()
    found: list[DocCommand] = []
    in_block = False
    pending: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if _FENCE_RE.match(line):
            in_block, pending = not in_block, []
            continue
        if not in_block:
            for match in _INLINE_RE.finditer(line):
                words = shell_words(match.group(1))
                if words:
                    found.append(DocCommand(document, number, match.group(1), tuple(words[1:]), complete=False))
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        text = " ".join(part.strip() for part in [*pending, stripped])
        pending = []
        words = shell_words(text)
        argv = _msadkit_argv(words) if words else None
        if argv is not None:
            found.append(DocCommand(document, start, text.split(" #")[0].strip(), argv, complete=True))
    return found


def documented_commands() -> list[DocCommand]:
    return [command for document in DOCUMENTS for command in commands_in(document)]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def parse_problem(parser: argparse.ArgumentParser, command: DocCommand) -> tuple[str | None, argparse.Namespace | None]:
    """``(problem, parsed arguments)``: a problem message, or None and the namespace."""
    if not command.complete:
        return _inline_problem(parser, command), None
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args, extra = parser.parse_known_args(list(command.argv))
    except SystemExit:
        message = stderr.getvalue().strip().splitlines()
        return (message[-1] if message else "the argument parser refused it"), None
    # The command line accepts key=value overrides after options (msadkit.cli), nothing else.
    if extra and not (
        getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra)
    ):
        return f"unrecognized arguments: {' '.join(extra)}", None
    if extra:
        args.overrides = list(args.overrides) + extra
    return None, args


def _inline_problem(parser: argparse.ArgumentParser, command: DocCommand) -> str | None:
    """An inline span: each leading word must name a sub-command, each ``--option`` must exist."""
    current = parser
    for word in command.argv:
        choices = _subparsers(current)
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in _options(current):
                return f"no option {option} in `{current.prog}`"
            continue
        if not choices:
            break
        if word not in choices:
            return f"no sub-command `{word}` in `{current.prog}` (it has: {', '.join(sorted(choices))})"
        current = choices[word]
    return None


def named_configs(args: argparse.Namespace) -> list[str]:
    """Config names a parsed command uses: its ``config`` argument and ``-p config NAME`` values."""
    names = []
    if isinstance(getattr(args, "config", None), str):
        names.append(args.config)
    for pair in getattr(args, "parameters", None) or []:
        if len(pair) == 2 and pair[0] in _CONFIG_PARAMETERS:
            names.append(pair[1])
    return names


def config_problem(name: str, overrides: list[str]) -> str | None:
    """A packaged config name that does not exist, or overrides it rejects; None when it loads.

    A ``.yaml`` path is the reader's own file (``my.yaml``) and is not checked.
    """
    from msadkit.config import list_packaged_configs, load_config
    from msadkit.errors import ConfigError

    if name.endswith((".yaml", ".yml")):
        return None
    if name not in list_packaged_configs():
        return f"config {name!r} is not a packaged config (see `msadkit configs`)"
    try:
        load_config(name, overrides)
    except ConfigError as exc:
        return str(exc)
    return None
