"""Feature-map helpers, run discovery, figures and the results recorder used by the notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from msadkit.analysis import alignment_plots, plots
from msadkit.analysis.feature_maps import (
    alignment_error_map,
    channel_mean,
    level_alignment_errors,
    level_names,
)
from msadkit.analysis.run_collection import find_run_folders, read_eval, sort_rows, write_ap_tables
from msadkit.distill.gid.instances import gi_options
from msadkit.distill.gid.selection import SELECTION_OPTIONS as GI_DEFAULTS
from msadkit.errors import MsadkitError
from msadkit.notebook.results import NotebookResults, read_results, to_jsonable


def test_channel_mean_and_alignment_error_by_hand():
    student = torch.tensor([[[[1.0, 2.0]], [[3.0, 6.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[[0.0, 2.0]], [[5.0, 2.0]]]])
    assert channel_mean(student).tolist() == [[[2.0, 4.0]]]
    # location 0: (|1-0| + |3-5|) / 2 = 1.5; location 1: (0 + 4) / 2 = 2
    assert alignment_error_map(student, target).tolist() == [[[1.5, 2.0]]]
    errors = level_alignment_errors([student, student[:, :1]], [target, target])
    assert errors[0] == pytest.approx((1 + 0 + 2 + 4) / 4)
    assert math.isnan(errors[1])  # a different channel count cannot be compared directly
    with pytest.raises(ValueError):
        alignment_error_map(student[:, :1], target)


def test_level_names_follow_strides():
    assert level_names([8, 16, 128]) == ["P3 (stride 8)", "P4 (stride 16)", "P7 (stride 128)"]


def test_gi_options_come_from_the_gid_loss_entry():
    assert gi_options(None) == GI_DEFAULTS
    gid = {"type": "gid", "top_k": 4, "iou_threshold": 0.5, "weight": 2}
    config = {"distill": {"losses": [{"type": "msad_feature"}, gid]}}
    options = gi_options(config)
    assert options["top_k"] == 4 and options["iou_threshold"] == 0.5
    assert "weight" not in options and options["score_mode"] == GI_DEFAULTS["score_mode"]


def _fake_run(folder: Path, *, method: str, role: str, width: float, ap: float) -> Path:
    folder.mkdir(parents=True)
    summary = {"method": method, "backbone": "slimmable_resnet50", "width": width, "role": role, "resolution": "low",
               "schedule": "demo", "capacity": width / 10, "eval": {"AP": ap, "AP50": ap + 10}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "eval.json").write_text(json.dumps(summary["eval"]))
    return folder


def test_find_run_folders_sort_rows_and_write_tables(tmp_path):
    from msadkit.analysis.ap_table import collect_runs

    student = _fake_run(tmp_path / "a" / "student", method="msad_student", role="student", width=0.25, ap=3.0)
    teacher = _fake_run(tmp_path / "b", method="msad_teacher", role="teacher", width=0.25, ap=5.0)
    wide = _fake_run(tmp_path / "c" / "deep" / "run", method="fcos", role="baseline", width=0.5, ap=4.0)
    # A run's own checkpoint folder is never searched.
    _fake_run(tmp_path / "b" / "checkpoints" / "x", method="bogus", role="student", width=1.0, ap=0.0)
    assert find_run_folders([tmp_path]) == sorted(p.resolve() for p in (student, teacher, wide))
    with pytest.raises(MsadkitError, match="does not exist"):
        find_run_folders([tmp_path / "missing"])

    rows = sort_rows(collect_runs(find_run_folders([tmp_path])))
    # Wider backbones first; within a width the teacher before the students.
    assert [row["method"] for row in rows] == ["fcos", "msad_teacher", "msad_student"]
    paths = write_ap_tables(rows, tmp_path / "table")
    assert {p.name for p in paths.values()} == {"ap_table.md", "ap_table.tex", "ap_table.csv"}
    assert paths["markdown"].read_text().count("\n") == 2 + 3
    assert read_eval(teacher)["AP"] == 5.0
    with pytest.raises(MsadkitError, match="not a finished"):
        read_eval(tmp_path)


def test_results_recorder_writes_json_and_figures(tmp_path):
    results = NotebookResults(tmp_path / "out", "test", interactive=False)
    assert read_results(tmp_path / "out")["complete"] is False
    results.record("tensor", torch.tensor([1.5, float("nan")]))
    results.record("scalar", torch.tensor(2.0))
    results.record("array", np.arange(3))
    results.record("path", tmp_path)
    results.record_file("table", tmp_path / "out" / "sub" / "t.md")
    figure = alignment_plots.plot_level_errors({"a": [1.0, 2.0]}, ["P3", "P4"])
    path = results.save_figure(figure, "errors")
    results.finish()
    data = read_results(tmp_path / "out")
    assert data["complete"] is True
    assert data["tensor"] == [1.5, None] and data["scalar"] == 2.0 and data["array"] == [0, 1, 2]
    assert data["path"] == str(tmp_path)
    assert data["files"]["table"] == "sub/t.md"
    assert data["figures"]["errors"] == "figures/errors.png" and path.is_file()
    with pytest.raises(TypeError):
        to_jsonable(object())
    with pytest.raises(MsadkitError, match="does not exist"):
        read_results(tmp_path / "nowhere")


def test_level_error_bars_have_the_given_heights():
    figure = alignment_plots.plot_level_errors({"before": [0.5, 0.25], "after": [0.125, float("nan")]}, ["P3", "P4"])
    heights = [patch.get_height() for patch in figure.axes[0].patches]
    assert heights == [0.5, 0.25, 0.125, 0.0]


def test_fusion_weight_heat_map_shows_the_high_resolution_weight():
    weights = np.array([[[0.9, 0.1], [0.3, 0.7]], [[0.6, 0.4], [0.5, 0.5]]])
    figure = alignment_plots.plot_fusion_weights(weights, ["P3", "P4"])
    heat = figure.axes[0].images[0].get_array()
    assert np.allclose(heat, weights[..., 0])
    assert figure.axes[0].images[0].get_clim() == (0, 1)


def test_ap_vs_capacity_draws_one_line_per_method_and_resolution_sorted_by_capacity():
    rows = [
        {"method": "msad", "capacity": 0.5, "AP": 30.0, "width": 0.5, "resolution": "low", "run": "m2"},
        {"method": "msad", "capacity": 0.1, "AP": 20.0, "width": 0.25, "resolution": "low", "run": "m1"},
        {"method": "fcos", "capacity": 0.2, "AP": 18.0, "width": 0.25, "resolution": "high", "run": "f1"},
        {"method": "fcos", "capacity": None, "AP": 19.0, "width": None, "resolution": "high", "run": "nocap"},
    ]
    figure = plots.plot_ap_vs_capacity(rows)
    lines = {line.get_label(): line for line in figure.axes[0].lines if not line.get_label().startswith("_")}
    assert set(lines) == {"msad (low res.)", "fcos (high res.)"}
    assert list(lines["msad (low res.)"].get_xdata()) == [0.1, 0.5]
    assert list(lines["msad (low res.)"].get_ydata()) == [20.0, 30.0]
    assert list(lines["fcos (high res.)"].get_xdata()) == [0.2]
    assert "nocap" in figure.axes[0].get_xlabel()


def test_feature_grid_crops_to_the_valid_region():
    image = np.zeros((64, 64, 3))
    image[:32, :48] = 0.8
    maps = {"teacher": [np.arange(64, dtype=float).reshape(8, 8)], "student": [np.ones((8, 8))]}
    figure = alignment_plots.plot_feature_grid(image, maps, [np.zeros((8, 8))], ["P3"], valid_size=(32, 48))
    shown = [ax.images[-1].get_array().shape for ax in figure.axes if ax.images]
    # image, two feature panels and the error panel, all cropped to 32 x 48
    assert shown[:4] == [(32, 48, 3), (32, 48), (32, 48), (32, 48)]
    teacher_panel = [ax for ax in figure.axes if ax.get_title() == "teacher"][0]
    cropped = teacher_panel.images[-1].get_array()
    # The 8x8 map covers 64 px: 8 px per cell; the valid 32 x 48 region keeps 4 x 6 cells.
    assert cropped[0, 0] == 0 and cropped[0, 47] == 5 and cropped[31, 0] == 24
