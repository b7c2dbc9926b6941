"""Every figure of the notebooks, drawn: no text covers another, none leaves the figure, and what
each figure promises (AP and AP50 apart, the KD ramp, seeds, readable AP_L, axes for one point)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from msadkit.analysis import alignment_plots, plots
from msadkit.analysis.text_layout import overlapping_texts, texts_outside, visible_texts
from msadkit.analysis.training_curves import METRIC_COLOURS, CurveLayout, DistillTerm
from msadkit.notebook.results import NotebookResults

EVAL = {"AP": 33.2, "AP50": 55.1, "AP75": 34.0, "APs": 12.0, "APm": 40.2, "APl": float("nan")}
OTHER = {**EVAL, "AP": 30.1, "APs": 9.5}
LEVELS = [f"P{i} (stride {2 ** i})" for i in range(3, 8)]
RNG = np.random.default_rng(0)


def student_history(end: int = 40, period: int = 10, ramp: int = 7) -> list[dict]:
    rows = []
    for it in range(period, end + 1, period):
        factor = min(1.0, (it - 1) / ramp)
        rows.append({"iter": it, "time": 1.0, "lr": 0.01, "loss": 3.0 - it / end, "loss_fcos_cls": 1.0 - it / 100,
                     "loss_fcos_loc": 0.9, "loss_fcos_ctr": 0.7, "loss_msad_feature": 0.6 * factor,
                     "loss_msad_feature_raw": 0.6})
    rows.append({"iter": end, "val/AP": 20.0, "val/AP50": 35.0})
    return rows


def teacher_history() -> list[dict]:
    return [{"iter": 20, "loss": 6.9, **{f"{b}_loss_fcos_{t}": 0.8 for b in ("high", "low", "fused")
                                         for t in ("cls", "loc", "ctr")}}]


STUDENT_LAYOUT = CurveLayout(max_iter=40, terms=(DistillTerm("loss_msad_feature", 1.0, 7),))


def capacity_rows() -> list[dict]:
    return [
        {"method": "msad_student", "capacity": 0.02, "AP": 20.0, "width": 0.25, "resolution": "low", "role": "student"},
        {"method": "msad_student", "capacity": 0.09, "AP": 30.0, "width": 0.5, "resolution": "low", "role": "student"},
        {"method": "fcos", "capacity": 0.02, "AP": 20.0, "width": 0.25, "resolution": "low", "role": "baseline"},
        {"method": "fcos", "capacity": 0.09, "AP": 29.5, "width": 1.0, "resolution": "high", "role": "baseline",
         "run": "a"},
        {"method": "fcos", "capacity": 0.09, "AP": 28.5, "width": 1.0, "resolution": "high", "role": "baseline",
         "run": "b"},
        {"method": "fcos", "capacity": 0.09, "AP": 28.0, "width": 0.5, "resolution": "low", "role": "baseline"},
        {"method": "fcos", "capacity": None, "AP": 19.0, "width": None, "resolution": "high", "run": "nocap"},
    ]


def instances(count: int) -> list[dict]:
    return [{"box": (10 + 3 * k, 10 + 2 * k, 80, 90), "score": 0.9 - 0.05 * k, "from_teacher": k % 2 == 0}
            for k in range(count)]


FIGURES = {
    "training, teacher with branches, one point": lambda: plots.plot_training_curves(
        {"this run": teacher_history()}, layout=CurveLayout(max_iter=300)),
    "training, distilled student with ramp and AP": lambda: plots.plot_training_curves(
        {"this run": student_history()}, layout=STUDENT_LAYOUT, final_evals={"this run": EVAL}),
    "training, a long run": lambda: plots.plot_training_curves(
        {"this run": student_history(end=450, period=10, ramp=75)},
        layout=CurveLayout(max_iter=450, terms=(DistillTerm("loss_msad_feature", 1.0, 75),))),
    "training, student against baseline": lambda: plots.plot_training_curves(
        {"distilled student": student_history(),
         "baseline (no teacher)": [{k: v for k, v in r.items() if "msad" not in k} for r in student_history()]},
        layout=STUDENT_LAYOUT, final_evals={"distilled student": EVAL, "baseline (no teacher)": OTHER}),
    "AP comparison, seeds": lambda: plots.plot_ap_comparison(
        {"teacher": EVAL, "baseline (no teacher)": [EVAL, OTHER], "baseline, step-matched (900 it)": [OTHER, EVAL],
         "distilled student": [EVAL, OTHER]},
        resolutions={"teacher": "high+low", "baseline (no teacher)": "low", "distilled student": "low"}),
    "AP by size": lambda: plots.plot_ap_by_size(
        {"teacher": EVAL, "baseline (no teacher)": OTHER, "distilled student": EVAL},
        resolutions={"teacher": "high+low", "baseline (no teacher)": "low", "distilled student": "low"}),
    "AP against capacity": lambda: plots.plot_ap_vs_capacity(capacity_rows()),
    "feature grid": lambda: alignment_plots.plot_feature_grid(
        RNG.random((256, 256, 3)),
        {name: [RNG.random((32 // 2 ** k, 32 // 2 ** k)) for k in range(5)]
         for name in ("teacher high-res", "teacher low-res", "teacher fused", "student at start (teacher init)",
                      "student after distillation", "baseline (no teacher)")},
        [RNG.random((32 // 2 ** k, 32 // 2 ** k)) for k in range(5)], LEVELS,
        error_label="error: |student after distillation - teacher fused|", title="validation image 1"),
    "level errors": lambda: alignment_plots.plot_level_errors(
        {"student at start (teacher init)": [0.3, 0.2, 0.15, 0.15, 0.1],
         "student after distillation": [0.12, float("nan"), 0.1, 0.1, 0.05],
         "baseline (no teacher)": [0.3, 0.31, 0.3, 0.29, 0.3]},
        [name.replace(" (", "\n(") for name in LEVELS]),
    "C-FF weights": lambda: alignment_plots.plot_fusion_weights(
        RNG.dirichlet((1, 1), size=(3, 5)), ["P3", "P4", "P5", "P6", "P7"],
        image_labels=["image 1", "image 2", "image 3"]),
    "general instances": lambda: plots.plot_general_instances_grid(
        [RNG.random((256, 256, 3))] * 2, [instances(8), instances(2)], gt_boxes=[[(20, 20, 60, 60)], []],
        valid_sizes=[(256, 256), (200, 256)], titles=["image 1: 8 general instances", "image 3: 2 general instances"]),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_no_text_covers_another_or_leaves_the_figure(name):
    figure = FIGURES[name]()
    assert visible_texts(figure)
    assert overlapping_texts(figure) == []
    assert texts_outside(figure) == []


def _axes(figure, title):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def test_ap_and_ap50_have_colours_of_their_own_and_the_final_ap_is_drawn():
    figure = FIGURES["training, distilled student with ramp and AP"]()
    lines = {line.get_label(): line for line in _axes(figure, "validation AP").get_lines()}
    assert lines["AP"].get_color() != lines["AP50"].get_color()
    assert (lines["AP"].get_color(), lines["AP50"].get_color()) == (METRIC_COLOURS["AP"], METRIC_COLOURS["AP50"])
    assert list(lines["final AP"].get_xdata()) == [40] and list(lines["final AP"].get_ydata()) == [33.2]


def test_the_distillation_panel_draws_the_ramp_and_raw_values():
    figure = FIGURES["training, distilled student with ramp and AP"]()
    panel = _axes(figure, "distillation losses")
    labels = [line.get_label() for line in panel.get_lines()]
    assert labels == ["msad_feature", "msad_feature, raw"]
    twin = next(ax for ax in figure.axes if ax is not panel and ax.bbox.bounds == panel.bbox.bounds)
    (factor,) = twin.get_lines()
    assert factor.get_label() == "weight x ramp (ramp 7 it)"
    assert list(factor.get_xdata()) == [0.0, 7.0, 40.0] and list(factor.get_ydata()) == [0.0, 1.0, 1.0]


def test_one_point_gets_a_marker_and_axes_from_zero():
    figure = FIGURES["training, teacher with branches, one point"]()
    total = _axes(figure, "total loss")
    (line,) = total.get_lines()
    assert line.get_marker() == "o"
    bottom, top = total.get_ylim()
    assert bottom == 0 and 6.9 < top < 10
    left, right = total.get_xlim()
    assert left <= 0 and 300 <= right < 320  # the run's length, not 19..21 around the point
    assert _axes(figure, "validation AP").texts[0].get_text().startswith("no validation during training")


def test_the_live_figure_keeps_its_size_and_panels_when_validation_arrives():
    losses_only = [row for row in student_history() if "loss" in row]
    before = plots.plot_training_curves({"run": losses_only}, layout=STUDENT_LAYOUT)
    after = plots.plot_training_curves({"run": student_history()}, layout=STUDENT_LAYOUT)
    assert tuple(before.get_size_inches()) == tuple(after.get_size_inches())
    assert [ax.get_title() for ax in before.axes] == [ax.get_title() for ax in after.axes]
    assert [ax.title.get_fontsize() for ax in before.axes] == [ax.title.get_fontsize() for ax in after.axes]


def test_teacher_terms_are_grouped_by_term_colour_and_branch_style():
    figure = FIGURES["training, teacher with branches, one point"]()
    legend = _axes(figure, "detection losses").get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "cls", "loc", "ctr", "high branch", "low branch", "fused branch"]


def test_size_labels_do_not_read_as_api():
    for name in ("AP comparison, seeds", "AP by size"):
        figure = FIGURES[name]()
        ticks = [label.get_text() for label in figure.axes[0].get_xticklabels()]
        assert not any("APl" in tick for tick in ticks), ticks
        assert any("AP$_L$" in tick for tick in ticks)


def test_seeds_are_counted_and_one_seed_is_said():
    several = FIGURES["AP comparison, seeds"]()
    legend = several.legends[0]
    assert "2 seeds per model" in legend.get_title().get_text()
    assert any(text.get_text().endswith("n=2") for text in legend.get_texts())
    single = plots.plot_ap_comparison({"teacher": EVAL, "student": EVAL})
    assert single.legends[0].get_title().get_text() == "1 seed"


def test_capacity_curves_keep_resolutions_apart_and_hide_no_point():
    figure = FIGURES["AP against capacity"]()
    ax = figure.axes[0]
    assert ax.get_ylim()[0] == 0
    curves = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(curves) == {"fcos (baseline, high res.)", "fcos (baseline, low res.)",
                           "msad_student (student, low res.)"}
    assert list(curves["fcos (baseline, high res.)"].get_ydata()) == [29.0]  # two seeds: their mean
    # The student and the baseline at (0.02, 20.0) are drawn side by side, not one over the other.
    figure.canvas.draw()
    spots = [tuple(np.round(line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]))[0]))
             for line in ax.get_lines() if line.get_label().startswith("_") and len(line.get_xdata()) == 1
             and line.get_xdata()[0] == 0.02]
    assert len(spots) == 2 and spots[0] != spots[1]
    assert "nocap" in ax.get_xlabel()


def test_saved_figures_have_print_resolution(tmp_path):
    results = NotebookResults(tmp_path, "test", interactive=False)
    path = results.save_figure(FIGURES["AP by size"](), "ap_by_size")
    dpi = Image.open(path).info["dpi"]
    assert min(dpi) >= 149.5


def test_the_checks_see_a_collision_and_a_text_past_the_edge():
    from msadkit.analysis.figure_style import new_figure

    figure = new_figure(figsize=(3, 2), tracked=False)
    ax = figure.subplots()
    ax.set_title("a title over a label")
    ax.text(0.5, 1.02, "a label under the title", transform=ax.transAxes, ha="center")
    figure.text(0.95, 0.5, "past the right edge")
    assert ("a title over a label", "a label under the title") in overlapping_texts(figure) or \
        ("a label under the title", "a title over a label") in overlapping_texts(figure)
    assert texts_outside(figure) == ["past the right edge"]
