"""Every "docs/methods.md §N.M" citation in the repository points at a section that exists.

Code, configs, docs, benchmarks and tests cite the method reference by section number; this test
parses the numbered headings of docs/methods.md and checks each cited number against them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
METHODS_DOC = ROOT / "docs" / "methods.md"

# "## 1. MSAD ..." -> "1", "### 1.2 Inputs ..." -> "1.2".
HEADING_RE = re.compile(r"^#{2,3}[ \t]+([0-9]+(?:\.[0-9]+)*)\.?(?=\s)", re.MULTILINE)

# One "§N(.M)" followed by an optional separator (comma, dash, en dash, "and").
_SECTION_LIST = r"(?:§\s*[0-9][0-9.]*[0-9]?(?:\s*(?:,|-|–|and)\s*)?)+"
# The citation itself, plus continuations such as "§1.6 caveats, §4": a few qualifier words,
# a separator, then more section numbers.
CITATION_RE = re.compile(
    r"docs/methods\.md\s+("
    + _SECTION_LIST
    + r"(?:\s*[A-Za-z][\w-]*(?:\s+[A-Za-z][\w-]*){0,2}\s*(?:,|;|\band\b)\s*"
    + _SECTION_LIST
    + r")*)"
)
SECTION_NUMBER_RE = re.compile(r"§\s*([0-9]+(?:\.[0-9]+)*)")
# The reference used to be cited without its folder; it now ships as docs/methods.md.
BARE_REFERENCE_RE = re.compile(r"(?<!docs/)\bMETHODS\.md")


def documented_sections(text: str) -> set[str]:
    return set(HEADING_RE.findall(text))


def cited_sections(citation: str) -> set[str]:
    """Section numbers of one citation string, e.g. ``docs/methods.md §1.2-§1.8`` -> {1.2, 1.8}."""
    match = CITATION_RE.search(citation)
    if match is None:
        return set()
    return set(SECTION_NUMBER_RE.findall(match.group(1)))


def citing_files() -> list[Path]:
    patterns = [
        ("README.md",),
        ("msadkit", "**/*.py"),
        ("msadkit", "**/*.yaml"),
        ("docs", "*.md"),
        ("benchmarks", "*.py"),
        ("benchmarks", "*.md"),
        ("tests", "**/*.py"),
    ]
    files: set[Path] = set()
    for pattern in patterns:
        if len(pattern) == 1:
            path = ROOT / pattern[0]
            if path.is_file():
                files.add(path)
        else:
            base = ROOT / pattern[0]
            if base.is_dir():
                files.update(p for p in base.glob(pattern[1]) if p.is_file())
    return sorted(files)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_extraction_self_check():
    assert cited_sections("docs/methods.md §1.2-§1.8") == {"1.2", "1.8"}
    assert cited_sections("(docs/methods.md §1.6 caveats, §4).") == {"1.6", "4"}
    assert cited_sections("docs/methods.md §2.2, §2.3") == {"2.2", "2.3"}
    assert cited_sections("docs/methods.md §1.2.") == {"1.2"}
    assert cited_sections("see docs/methods.md §3): GID") == {"3"}
    assert documented_sections("## 1. MSAD\n### 1.2 Inputs\n### 1.10 FLOPs\n") == {"1", "1.2", "1.10"}
    assert BARE_REFERENCE_RE.search("see docs/methods.md") is None
    bare = "METHODS" + ".md"  # spelled in two pieces so this file does not trip the check below
    assert BARE_REFERENCE_RE.search("see docs/" + bare) is None
    assert BARE_REFERENCE_RE.search(f"see {bare} §2") is not None


def test_methods_doc_has_numbered_sections():
    assert METHODS_DOC.is_file(), "docs/methods.md is missing"
    sections = documented_sections(_read(METHODS_DOC))
    for number in ("1", "2", "3", "4", "5", "1.1", "1.10", "2.7", "3.7"):
        assert number in sections, f"docs/methods.md has no section {number}"


def test_every_citation_points_at_an_existing_section():
    sections = documented_sections(_read(METHODS_DOC))
    problems: list[str] = []
    citations = 0
    for path in citing_files():
        text = _read(path)
        own_file = path.resolve() == Path(__file__).resolve()
        for match in CITATION_RE.finditer(text):
            citations += 0 if own_file else 1  # this file's examples do not count toward the minimum
            for number in sorted(set(SECTION_NUMBER_RE.findall(match.group(1)))):
                if number not in sections:
                    rel = path.relative_to(ROOT)
                    problems.append(f"{rel}:{_line_of(text, match.start())}: §{number} is not a section")
    assert not problems, "citations of missing docs/methods.md sections:\n" + "\n".join(problems)
    assert citations >= 15, f"only {citations} citations of docs/methods.md found; the walk looks broken"


def test_no_citation_of_the_reference_without_its_folder():
    offenders = []
    for path in citing_files():
        text = _read(path)
        for match in BARE_REFERENCE_RE.finditer(text):
            offenders.append(f"{path.relative_to(ROOT)}:{_line_of(text, match.start())}")
    assert not offenders, "cite the reference as docs/methods.md:\n" + "\n".join(offenders)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
