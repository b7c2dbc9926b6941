"""AP tables built from run folders: Markdown, LaTeX and CSV."""

from __future__ import annotations

import csv
import json
import math
from typing import NamedTuple

import pytest
import yaml

from msadkit.analysis.ap_table import (
    TABLE_COLUMNS,
    collect_runs,
    table_to_csv,
    table_to_latex,
    table_to_markdown,
)
from msadkit.errors import MsadkitError

TEACHER_EVAL = {"AP": 33.24, "AP50": 51.0, "AP75": 35.06, "APs": None, "APm": 36.0, "APl": 45.31}
STUDENT_EVAL = {"AP": 30.3, "AP50": 48.26, "AP75": 31.0, "APs": 14.0, "APm": 33.5, "APl": 41.0}
BASELINE_EVAL = {"AP": 38.64, "AP50": 57.0, "AP75": 41.0, "APs": 22.0, "APm": 42.0, "APl": 49.96}


def make_teacher_run(root):
    run = root / "msad_teacher_w025"
    run.mkdir()
    summary = {
        "method": "msad_teacher",
        "backbone": "slimmable_resnet50",
        "width": 0.25,
        "role": "teacher",
        "resolution": "high+low",
        "schedule": "demo-300it",
        "capacity": 0.0849,
        "branch": "fused",
        "eval": TEACHER_EVAL,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


class ConfigRun(NamedTuple):
    """A run folder without summary.json: what its config.yaml and eval.json say."""

    method: str
    arch: str
    role: str
    backbone: str
    width: float
    resolution: str
    evaluation: dict


CONFIG_RUNS = {
    "msad_student_w025": ConfigRun("msad_student", "msad_student", "student", "slimmable_resnet50", 0.25, "low", STUDENT_EVAL),
    "fcos_r50": ConfigRun("fcos", "fcos", "baseline", "resnet50", 1.0, "high", BASELINE_EVAL),
    "teacher_from_config": ConfigRun(
        "msad_teacher", "msad_teacher", "teacher", "slimmable_resnet50", 0.5, "high", {**TEACHER_EVAL, "branch": "fused"}
    ),
}


def make_config_run(root, name):
    """The run folder ``root/name`` of :data:`CONFIG_RUNS`."""
    spec = CONFIG_RUNS[name]
    run = root / name
    run.mkdir()
    config = {
        "method": spec.method,
        "role": spec.role,
        "schedule": "demo-300it",
        "model": {"arch": spec.arch, "resolution": spec.resolution, "backbone": {"name": spec.backbone, "width": spec.width}},
        "output_dir": str(run),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "eval.json").write_text(json.dumps(spec.evaluation))
    return run


def make_student_run(root):
    return make_config_run(root, "msad_student_w025")


def test_collect_runs_reads_summary_and_config_fallback(tmp_path):
    rows = collect_runs([make_teacher_run(tmp_path), make_student_run(tmp_path)])
    teacher, student = rows
    assert set(TABLE_COLUMNS) <= set(teacher)
    assert teacher["method"] == "msad_teacher" and teacher["branch"] == "fused"
    assert teacher["capacity"] == 0.0849 and teacher["width"] == 0.25
    assert teacher["AP"] == 33.24 and math.isnan(teacher["APs"])
    assert student["method"] == "msad_student" and student["role"] == "student"
    assert student["resolution"] == "low" and student["schedule"] == "demo-300it"
    assert student["run"] == "msad_student_w025" and student["branch"] is None
    # Derived from the backbone: width 0.25 on a 400x667 input, MSAD's 0.017 (README: 0.02x).
    assert student["capacity"] == pytest.approx(0.017, abs=0.0006)


def test_markdown_table_rows(tmp_path):
    baseline = make_config_run(tmp_path, "fcos_r50")
    teacher_run = make_config_run(tmp_path, "teacher_from_config")
    rows = collect_runs([make_teacher_run(tmp_path), make_student_run(tmp_path), baseline, teacher_run])
    lines = table_to_markdown(rows).splitlines()
    assert lines[0] == "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert lines[1].count("|") == len(TABLE_COLUMNS) + 1
    assert lines[2:] == [
        "| msad_teacher | slimmable_resnet50 | 0.08 | demo-300it | 0.25 | teacher | high+low"
        " | 33.2 | 51.0 | 35.1 | - | 36.0 | 45.3 | msad_teacher_w025 |",
        "| msad_student | slimmable_resnet50 | 0.02 | demo-300it | 0.25 | student | low"
        " | 30.3 | 48.3 | 31.0 | 14.0 | 33.5 | 41.0 | msad_student_w025 |",
        # A plain ResNet-50 has no width; its capacity at 800x1333 is the reference 1.00.
        "| fcos | resnet50 | 1.00 | demo-300it | - | baseline | high"
        " | 38.6 | 57.0 | 41.0 | 22.0 | 42.0 | 50.0 | fcos_r50 |",
        # An msad_teacher config runs on both resolutions: 0.25 * 1.25 ~ 0.32.
        "| msad_teacher | slimmable_resnet50 | 0.32 | demo-300it | 0.50 | teacher | high+low"
        " | 33.2 | 51.0 | 35.1 | - | 36.0 | 45.3 | teacher_from_config |",
    ]
    assert rows[3]["branch"] == "fused"


def test_capacity_left_empty_when_not_computed(tmp_path):
    (row,) = collect_runs([make_student_run(tmp_path)], compute_capacity=False)
    assert row["capacity"] is None
    assert "| msad_student | slimmable_resnet50 | - |" in table_to_markdown([row])


def test_latex_escapes_underscores(tmp_path):
    rows = collect_runs([make_teacher_run(tmp_path), make_student_run(tmp_path)])
    latex = table_to_latex(rows)
    lines = latex.splitlines()
    assert lines[0] == r"\begin{tabular}{llrlrllrrrrrr}"
    assert lines[-1] == r"\end{tabular}"
    assert r"AP$_{50}$" in lines[2] and lines[2].endswith(r"\\")
    assert (
        r"msad\_teacher & slimmable\_resnet50 & 0.08 & demo-300it & 0.25 & teacher & high+low"
        r" & 33.2 & 51.0 & 35.1 & - & 36.0 & 45.3 \\" in lines
    )
    body = "\n".join(lines[3:])
    assert "_" not in body.replace(r"\_", "").replace("$_{", "")


def test_csv_reads_back(tmp_path):
    rows = collect_runs([make_teacher_run(tmp_path), make_student_run(tmp_path)])
    path = tmp_path / "tables" / "ap.csv"
    table_to_csv(rows, path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        back = list(reader)
        assert reader.fieldnames[: len(TABLE_COLUMNS)] == list(TABLE_COLUMNS)
    assert len(back) == 2
    assert back[0]["method"] == "msad_teacher" and back[0]["branch"] == "fused"
    assert float(back[0]["AP"]) == 33.24  # unrounded in the CSV
    assert back[0]["APs"] == ""  # missing value
    assert float(back[1]["capacity"]) == pytest.approx(rows[1]["capacity"])
    assert back[1]["run"] == "msad_student_w025"
    assert [p.name for p in path.parent.iterdir()] == ["ap.csv"]  # no temporary file left behind


def test_missing_folder_or_files_name_the_folder(tmp_path):
    with pytest.raises(MsadkitError, match="nowhere"):
        collect_runs([tmp_path / "nowhere"])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(MsadkitError, match="empty_run.*eval.json, config.yaml"):
        collect_runs([empty])
    only_eval = tmp_path / "only_eval"
    only_eval.mkdir()
    (only_eval / "eval.json").write_text(json.dumps(STUDENT_EVAL))
    with pytest.raises(MsadkitError, match="only_eval.*config.yaml"):
        collect_runs([only_eval])


def test_malformed_files_name_the_file(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "summary.json").write_text("{oops")
    with pytest.raises(MsadkitError, match="summary.json"):
        collect_runs([run])
    (run / "summary.json").write_text(json.dumps({"method": "fcos"}))
    with pytest.raises(MsadkitError, match="summary.json.*'eval'"):
        collect_runs([run])
    (run / "summary.json").write_text(json.dumps({"eval": {"AP": "high"}}))
    with pytest.raises(MsadkitError, match="summary.json.*'AP'"):
        collect_runs([run])
