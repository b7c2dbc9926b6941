"""README.md's command sequences run top to bottom, as written, in a fresh folder (slow).

Each sequence is the code block under one README heading: the smoke test, MSAD, ADL/SAD and GID,
and the notebooks. Its commands run one after the other in one temporary folder (the README asks
for that: later commands find the earlier runs under ``runs/``), with the synthetic dataset in this
test session's cache. Two documented changes keep the runs tiny:

- the short-run option: ``--iterations N`` on ``msadkit train`` and ``msadkit demo``,
  ``-p iterations N`` on the notebooks that train (01, 02), replacing a value the README gives;
- ``data.pseudo_labels_allow_empty=true`` on the SAD run, as the README says for a teacher trained
  that briefly (it writes no pseudo-label box, and ``pseudo-label`` must say so).

Everything else (configs, folders, options) is the README's text, so a README edit that breaks a
step fails here, naming the README line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.docs.doc_commands import ASSIGNMENT_RE, ROOT, shell_words

README = ROOT / "README.md"
ITERATIONS = 2
# README heading -> the sequence under it (its first bash block).
SEQUENCES = {
    "smoke": "Two-minute smoke test",
    "msad": "MSAD (multi-scale aligned distillation)",
    "adl_sad_gid": "ADL / SAD and GID",
    "notebooks": "Batch (papermill)",
}
# Each step may take a few minutes on a loaded 2-core machine; a hang should not block CI forever.
STEP_TIMEOUT_S = 1800

_HEADING_RE = re.compile(r"^#+\s+(.*?)\s*$")


def readme_block(heading: str) -> list[tuple[int, str]]:
    """``(line number, command text)`` of the first ``bash`` block under ``heading`` (continuation
    lines joined, blank and comment lines dropped)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    current, in_block, found, commands, pending, start = None, False, False, [], [], 0
    for number, line in enumerate(lines, start=1):
        if not in_block and (match := _HEADING_RE.match(line)):
            current = match.group(1)
        if line.strip().startswith("```"):
            if in_block and found:
                return commands
            in_block = not in_block
            found = in_block and current == heading and line.strip() == "```bash"
            continue
        if not (in_block and found):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        text = " ".join(part.strip() for part in [*pending, line.strip()])
        pending = []
        if text and not text.startswith("#"):
            commands.append((start, text))
    raise AssertionError(f"README.md has no ```bash block under the heading {heading!r}")


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    if option in argv:
        index = argv.index(option)
        return [*argv[: index + 1], value, *argv[index + 2 :]]
    return [*argv, option, value]


def _set_parameter(argv: list[str], key: str, value: str) -> list[str]:
    for index in range(len(argv) - 2):
        if argv[index] in ("-p", "--parameter") and argv[index + 1] == key:
            return [*argv[: index + 2], value, *argv[index + 3 :]]
    return [*argv, "-p", key, value]


def shortened(argv: list[str]) -> list[str]:
    """The README's command with the documented short-run changes (module docstring)."""
    if argv[:1] == ["train"]:
        argv = _set_option(argv, "--iterations", str(ITERATIONS))
        if argv[1].endswith("_sad_demo"):
            argv = [*argv, "data.pseudo_labels_allow_empty=true"]
    elif argv[:1] == ["demo"]:
        argv = _set_option(argv, "--iterations", str(ITERATIONS))
    elif argv[:2] in (["notebook", "run"], ["notebook", "sweep"]) and argv[2].startswith(("01", "02")):
        argv = _set_parameter(argv, "iterations", str(ITERATIONS))
    return argv


@pytest.mark.slow
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_readme_sequence_runs(sequence, tmp_path):
    commands = readme_block(SEQUENCES[sequence])
    assert commands, f"no command under {SEQUENCES[sequence]!r}"
    started = time.perf_counter()
    for line, text in commands:
        words = shell_words(text)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        while words and ASSIGNMENT_RE.match(words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert words and words[0] == "msadkit", f"README.md:{line}: `{text}` is not an msadkit command"
        argv = shortened(words[1:])
        result = subprocess.run(
            [sys.executable, "-m", "msadkit.cli", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            check=False,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        output = (result.stdout + result.stderr)[-3000:]
        assert result.returncode == 0, (
            f"README.md:{line}: `{text}` (run as `msadkit {shlex.join(argv)}`) exited {result.returncode}:\n{output}"
        )
        if argv[0] == "pseudo-label" and result.stdout.startswith("0 pseudo-labels"):
            assert "holds no box" in result.stderr and "--score-threshold" in result.stderr, output
    print(f"{sequence}: {len(commands)} commands in {time.perf_counter() - started:.0f} s")


@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_every_readme_sequence_still_has_its_block(sequence):
    """Fast guard for the slow test above: a README edit that moves or renames a block fails here."""
    commands = readme_block(SEQUENCES[sequence])
    assert any("msadkit " in text for _, text in commands), f"no msadkit command under {SEQUENCES[sequence]!r}"
