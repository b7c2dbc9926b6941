"""The house rules of the package: layers (import-linter), no import cycles, files a reader can
hold in their head, and one source for the defaults that two places use."""

from __future__ import annotations

import subprocess
import tomllib
import sys
from pathlib import Path

import grimp
import pytest

from msadkit.distill.gid.instances import gi_options
from msadkit.distill.gid.selection import SELECTION_OPTIONS
from msadkit.distill.gid.term import OPTIONS as GID_TERM_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph, each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(c for c in _strongly_connected(graph) if len(c) > 1) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other_in_a_loop():
    # grimp reads every import statement, those inside functions and TYPE_CHECKING blocks included.
    graph = grimp.build_graph("msadkit")
    edges = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    cycles = [component for component in _strongly_connected(edges) if len(component) > 1]
    assert cycles == []


def test_layer_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert len(contracts) >= 2, "the package layers and the engine's roles are both contracts"
    assert f"{len(contracts)} kept, 0 broken" in result.stdout


def test_no_package_file_is_longer_than_a_reader_can_follow():
    long_files = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / "msadkit").rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long_files == {}


def test_notebook_draws_the_general_instances_training_selects():
    # The same selection options, with the same defaults, feed the GID term and the drawing.
    assert set(SELECTION_OPTIONS) <= set(GID_TERM_OPTIONS)
    assert {key: GID_TERM_OPTIONS[key] for key in SELECTION_OPTIONS} == SELECTION_OPTIONS
    assert gi_options(None) == SELECTION_OPTIONS
    assert gi_options(None)["min_box_size"] == 1.0


@pytest.mark.parametrize("entry", [{"type": "gid", "min_box_size": 4.0, "top_k": 3}, {"type": "gid"}])
def test_a_student_runs_gid_options_reach_the_drawing(entry):
    options = gi_options({"distill": {"losses": [{"type": "msad_feature"}, entry]}})
    expected = {**SELECTION_OPTIONS, **{k: v for k, v in entry.items() if k != "type"}}
    assert options == expected
