"""Every `msadkit ...` command in README.md, docs/*.md and benchmarks/README.md parses through the
real argument parser, and the packaged configs it names exist and accept its overrides.

A doc edit that misspells a command, an option or a config fails here, naming the file, the line
and the command (see tests/docs/doc_commands.py for what counts as a command).
"""

from __future__ import annotations

import pytest

from msadkit.cli import build_parser
from tests.docs.doc_commands import (
    ROOT,
    DocCommand,
    commands_in,
    config_problem,
    documented_commands,
    named_configs,
    parse_problem,
)

COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def _problem(parser, command: DocCommand) -> str | None:
    problem, args = parse_problem(parser, command)
    if problem is not None or args is None:
        return problem
    overrides = [text for text in getattr(args, "overrides", None) or [] if "=" in text]
    for name in named_configs(args):
        # Overrides belong to the command's own config, not to a notebook's `-p config`.
        problem = config_problem(name, overrides if name == getattr(args, "config", None) else [])
        if problem is not None:
            return problem
    return None


def test_the_docs_hold_commands():
    readme = [c for c in COMMANDS if c.document.name == "README.md" and c.document.parent.name != "benchmarks"]
    assert sum(c.complete for c in readme) >= 20
    assert {c.argv[0] for c in readme if c.complete} >= {"train", "evaluate", "pseudo-label", "notebook", "demo"}


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.document.relative_to(ROOT)}:{c.line}" for c in COMMANDS])
def test_documented_command_parses(parser, command):
    problem = _problem(parser, command)
    assert problem is None, f"{command.where}: {problem}"


def test_extraction_follows_shell_rules(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `msadkit configs` first, not `msadkit.cli`.\n"
        "```bash\n"
        "make demo\n"
        "OMP_NUM_THREADS=1 msadkit train fcos_demo solver.max_iter=3   # a comment\n"
        "MASTER_ADDR=node0 NODE_RANK=<0 or 1> \\\n"
        "  msadkit notebook run 02 -p losses '[\"gid\"]'\n"
        "```\n"
        "msadkit train outside_a_block\n"
    )
    found = commands_in(doc)
    assert [(c.line, c.argv, c.complete) for c in found] == [
        (1, ("configs",), False),
        (4, ("train", "fcos_demo", "solver.max_iter=3"), True),
        (5, ("notebook", "run", "02", "-p", "losses", '["gid"]'), True),
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("msadkit train msad/teacher_w025 trainer.devices=8", "not a packaged config"),
        ("msadkit train fcos_demo solver.max_iters=3", "unknown config key 'solver.max_iters'"),
        ("msadkit evaluate runs/a --brnch fused", "unrecognized arguments: --brnch"),
        ("msadkit evaluate runs/a --branch middle", "invalid choice: 'middle'"),
        ("msadkit trian fcos_demo", "invalid choice: 'trian'"),
        ("msadkit notebook run 01 -p config gid/no_such_demo", "not a packaged config"),
    ],
)
def test_a_broken_command_is_reported(parser, tmp_path, line, expected):
    doc = tmp_path / "doc.md"
    doc.write_text(f"```bash\n{line}\n```\n")
    (command,) = commands_in(doc)
    assert expected in (_problem(parser, command) or "")


def test_inline_spans_check_the_command_path_and_options(parser, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("`msadkit train` and `msadkit train --iterations` but `msadkit notebook rnu` or `msadkit train --fast`\n")
    problems = [_problem(parser, command) for command in commands_in(doc)]
    assert problems[:2] == [None, None]
    assert "no sub-command `rnu`" in problems[2]
    assert "no option --fast" in problems[3]
