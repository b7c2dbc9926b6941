"""The house rules of the package: layers (import-linter), no import cycles, files a reader can
hold in their head, and one source for the defaults that two places use."""

from __future__ import annotations

import subprocess
import sys
import tomllib
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


def test_notebook_draws_the_general_instances_training_selects(monkeypatch):
    # The same selection options, with the same defaults, feed the GID term and the drawing.
    assert set(SELECTION_OPTIONS) <= set(GID_TERM_OPTIONS)
    assert {key: GID_TERM_OPTIONS[key] for key in SELECTION_OPTIONS} == SELECTION_OPTIONS
    assert gi_options(None) == SELECTION_OPTIONS
    assert gi_options(None)["min_box_size"] == 1.0

    # And the boxes drawn are those the term selects in a training step, for a student run whose
    # gid entry changes the selection: notebook 03's calls, then the rectangles of its figure.
    import torch
    from matplotlib.colors import to_rgba
    from matplotlib.patches import Rectangle

    from msadkit.analysis import plots
    from msadkit.distill.distiller import Distiller
    from msadkit.distill.gid.instances import general_instances, instances_as_dicts
    from msadkit.distill.registry import build_term
    from tests.distill.test_gid_term import tiny_fcos

    entry = {"type": "gid", "top_k": 4, "iou_threshold": 0.5, "min_box_size": 6.0, "fcos_centerness": True}
    student_config = {"distill": {"losses": [{"type": "msad_feature"}, entry]}}
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(8, seed=1)
    torch.nn.init.constant_(teacher.head.cls_logits.bias, 0.5)  # a teacher that disagrees with the student
    term = build_term(entry, student=student, teacher=teacher)
    trained = []
    select = term.select
    monkeypatch.setattr(term, "select", lambda *args: trained.extend(select(*args)) or trained[-len(args[2]) :])
    images, sizes = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), [(64, 64), (56, 40)]
    gt = [[[8.0, 8.0, 40.0, 40.0]], [[4.0, 10.0, 30.0, 50.0]]]
    targets = [{"boxes": torch.tensor(b), "labels": torch.tensor([1])} for b in gt]
    Distiller(student=student, teacher=teacher, losses=[term]).train()(images, sizes, targets)
    assert len(trained) == 2 and all(0 < len(gi.boxes) <= 4 for gi in trained)

    options = gi_options(student_config)
    drawn_instances = general_instances(teacher, student, images, sizes, **options)
    defaults = general_instances(teacher, student, images, sizes, **gi_options(None))
    assert any(len(a.boxes) != len(b.boxes) or not torch.equal(a.boxes, b.boxes) for a, b in zip(defaults, trained))
    pictures = [torch.rand(64, 64, 3).numpy() for _ in range(2)]
    figure = plots.plot_general_instances_grid(
        pictures, [instances_as_dicts(selected) for selected in drawn_instances], gt_boxes=gt, valid_sizes=sizes,
        titles=["a", "b"],
    )
    colours = {to_rgba("#d62728"): True, to_rgba("#1f77b4"): False}  # teacher red, student blue
    for ax, selected, truth in zip(figure.axes, trained, gt):
        rectangles = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
        drawn = [
            ([r.get_x(), r.get_y(), r.get_x() + r.get_width(), r.get_y() + r.get_height()], colours[r.get_edgecolor()])
            for r in rectangles
            if r.get_edgecolor() in colours
        ]
        dashed = [r for r in rectangles if r.get_edgecolor() == to_rgba("#2ca02c")]
        assert [[r.get_x(), r.get_y(), r.get_x() + r.get_width(), r.get_y() + r.get_height()] for r in dashed] == truth
        assert len(drawn) == len(selected.boxes)
        for (box, from_teacher), expected_box, expected_flag in zip(drawn, selected.boxes, selected.from_teacher):
            assert box == pytest.approx(expected_box.tolist(), abs=1e-3)  # pixels of a 64 px image
            assert from_teacher == bool(expected_flag)
    import matplotlib.pyplot as plt

    plt.close(figure)


@pytest.mark.parametrize("entry", [{"type": "gid", "min_box_size": 4.0, "top_k": 3}, {"type": "gid"}])
def test_a_student_runs_gid_options_reach_the_drawing(entry):
    options = gi_options({"distill": {"losses": [{"type": "msad_feature"}, entry]}})
    expected = {**SELECTION_OPTIONS, **{k: v for k, v in entry.items() if k != "type"}}
    assert options == expected
