"""The comparison table and figure from fixed fake run folders (eval.json, metrics.jsonl and a
bootstrap cache written here), with every statistic and plateau mark worked out by hand."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from PIL import Image

from msadkit.compare import collect, make_request, planned_runs, plateau_of, write_outputs
from msadkit.compare.table import HEADERS, csv_text, latex, markdown, runs_csv_text
from tests.compare.fake_runs import AP, BASELINE_SE, write_fake_comparison, write_fake_run


@pytest.fixture
def comparison(tmp_path):
    request = make_request("same-resolution", methods=["adl", "gid"], seeds=[0, 1, 2], out=tmp_path, quick=True)
    write_fake_comparison(planned_runs(request)["same-resolution"])
    return request, collect(request)["same-resolution"]


def test_plateau_mark_reads_the_last_quarter_of_validation():
    rows = [{"iter": 25, "val/AP": 10.0}, {"iter": 50, "val/AP": 18.0}, {"iter": 75, "val/AP": 20.0},
            {"iter": 100, "val/AP": 20.9}]
    mark = plateau_of(rows, 100)
    assert mark.gain == pytest.approx(0.9) and mark.plateaued is True and mark.mark == ""
    rising = plateau_of(rows[:3] + [{"iter": 100, "val/AP": 21.0}], 100)
    assert rising.gain == pytest.approx(1.0) and rising.plateaued is False and rising.mark == "†"
    # No validation at the end: the final evaluation stands in for it; none at 3/4: unknown.
    assert plateau_of(rows[:3], 100, final_ap=20.5).plateaued is True
    assert plateau_of(rows[3:], 100).plateaued is None and plateau_of([], 100).mark == "?"
    # The reference is the last validation at or before 3/4 of the run, not an earlier one.
    assert plateau_of([{"iter": 50, "val/AP": 1.0}, {"iter": 70, "val/AP": 9.5}, {"iter": 100, "val/AP": 10.0}],
                      100).gain == pytest.approx(0.5)


def test_markdown_table_layout_statistics_and_marks(comparison):
    _, table = comparison
    text = markdown(table)
    lines = text.splitlines()
    assert lines[0] == ("**same resolution: FCOS width 0.5 teacher -> width 0.25 student; n = 3 seeds (0, 1, 2), "
                        "paired by seed**")
    assert lines[2] == "| " + " | ".join(HEADERS) + " |"
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in lines[4:9]}
    assert list(rows) == ["teacher (FCOS, width 0.5)", "baseline (no teacher)", "step-matched control", "adl", "gid"]
    cell = {model: dict(zip(HEADERS, cells)) for model, cells in rows.items()}

    teacher = cell["teacher (FCOS, width 0.5)"]
    assert AP["teacher"] == [30.0, 31.0, 32.0] and teacher["AP"] == "31.0 ± 1.0" and teacher["ΔAP"] == ""
    baseline = cell["baseline (no teacher)"]
    assert baseline["AP per seed"] == "20.0 / 22.0 / 21.0" and baseline["eval SE"] == "1.00"
    assert baseline["iterations"] == "4" and baseline["plateaued"] == "3/3"

    # adl - baseline: +1.0 +1.5 +0.5 -> mean 1.0, sd 0.5, t = 1 / (0.5 / sqrt 3) on 2 df.
    adl = cell["adl"]
    half = 4.302652729911275 * 0.5 / math.sqrt(3)
    assert adl["ΔAP"] == "+1.00" and adl["sd(Δ)"] == "0.50"
    assert adl["95 % CI"] == f"[{1 - half:+.2f}, {1 + half:+.2f}]" == "[-0.24, +2.24]"
    p_adl = 1 - math.sqrt(3) * 2 / math.sqrt(12 + 2)  # two-sided p of t on 2 df: 1 - t / sqrt(t^2 + 2)
    p_gid = 1 - 5 / math.sqrt(27)  # gid: -1.0 -1.0 -0.5 -> mean -5/6, sd 1/sqrt(12), t = -5
    assert adl["p"] == f"{p_adl:.3f}" == "0.074"
    # Holm over the two methods: 2 x 0.0378 = 0.0755 for gid; adl keeps the running maximum.
    assert cell["gid"]["p (Holm)"] == adl["p (Holm)"] == f"{2 * p_gid:.3f}"
    assert cell["gid"]["ΔAP"] == "-0.83" and cell["gid"]["p"] == f"{p_gid:.3f}"
    # Plateau marks: adl seed 1 still rose 2.5 AP over its last quarter; gid seed 2 has no validation rows.
    assert adl["AP per seed"] == "21.0 / 23.5† / 21.5" and adl["plateaued"] == "2/3"
    assert cell["gid"]["AP per seed"] == "19.0 / 21.0 / 20.5?" and cell["gid"]["plateaued"] == "2/3 (1 ?)"
    assert adl["weight"] == "1x" and adl["eval SE"] == "-"
    assert adl["APs"] == "12.0" and adl["APm"] == "22.0" and adl["APl"] == "-"
    # The control is compared too, outside the Holm family.
    control = cell["step-matched control"]
    assert control["ΔAP"] == "+3.00" and control["p (Holm)"] == "(reference)"
    assert control["iterations"] == "8" and control["Δ vs control [95 % CI]"] == ""
    # adl - control: -3.0 -1.5 -1.5 -> mean -2.0, sd sqrt(0.75), half-width 4.3027 * sqrt(0.75) / sqrt(3).
    half_control = 4.302652729911275 * math.sqrt(0.75) / math.sqrt(3)
    assert adl["Δ vs control [95 % CI]"] == f"-2.00 [{-2 - half_control:+.2f}, {-2 + half_control:+.2f}]"
    assert adl["Δ vs control [95 % CI]"] == "-2.00 [-4.15, +0.15]"

    notes = text.split("\n\n", 1)[1]
    assert "n = 3 seeds" in notes and "Holm-Bonferroni over the 2 method(s)" in notes
    assert "Not tuned, official weight (1x): adl, gid" in notes
    # The reported AP comes from the larger split evaluated after training; the plateau from the training-time one.
    assert "each run's final weights on 6 validation images (evaluated after training; its first 4 are" in notes
    assert "over those 6 images (200 resamples)" in notes and "validation AP (4 images) rose by 1 AP" in notes


def test_csv_latex_and_figure_files(comparison, tmp_path):
    _, table = comparison
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(csv_text(table)))}
    assert float(rows["adl"]["delta_mean"]) == pytest.approx(1.0)
    assert float(rows["adl"]["ci_low"]) == pytest.approx(1 - 4.302652729911275 * 0.5 / math.sqrt(3))
    assert rows["adl"]["plateaued"] == "2" and rows["adl"]["not_plateaued"] == "1"
    assert rows["baseline"]["p_holm"] == "" and rows["control"]["p_holm"] == ""
    assert float(rows["baseline"]["eval_se_mean"]) == pytest.approx(sum(BASELINE_SE) / 3)
    per_run = list(csv.DictReader(io.StringIO(runs_csv_text(table))))
    assert len(per_run) == 15
    rising = next(r for r in per_run if r["model"] == "adl" and r["seed"] == "1")
    assert float(rising["plateau_gain"]) == pytest.approx(2.5) and rising["plateaued"] == "False"

    tex = latex(table)
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "23.5\\dag{}" in tex and "$\\Delta$AP" in tex

    files = write_outputs(table, tmp_path / "out")
    assert set(files) == {"markdown", "latex", "csv", "runs_csv", "figure"}
    pixels = np.asarray(Image.open(files["figure"]).convert("RGB"), dtype=np.float64)
    assert pixels.shape[1] > 500 and pixels.std() > 10.0


def test_an_msad_method_is_compared_with_its_teacher_init_ablation(tmp_path):
    request = make_request("cross-resolution", methods=["msad_feature@msad", "gid"], seeds=[0, 1, 2], out=tmp_path,
                           quick=True)
    aps = {"fcos_high": [30.0, 31.0, 32.0], "msad_teacher": [33.0, 34.0, 35.0], "baseline": [20.0, 22.0, 21.0],
           "control": [24.0, 25.0, 23.0], "teacher_init": [24.0, 25.0, 25.5],
           "msad_feature@msad": [25.0, 27.0, 26.0], "gid": [21.0, 22.0, 22.0]}
    for run in planned_runs(request)["cross-resolution"]:
        write_fake_run(run, aps[run.model][run.seed])
    table = collect(request)["cross-resolution"]
    text = markdown(table)
    # msad - teacher_init: +1.0 +2.0 +0.5 -> mean 7/6, sample variance 7/12.
    mean, half = 7 / 6, 4.302652729911275 * math.sqrt(7 / 12) / math.sqrt(3)
    assert (f"msad_feature@msad minus the teacher-init ablation (same start, KD weight 0), paired by seed: "
            f"+1.17 [{mean - half:+.2f}, {mean + half:+.2f}] AP") in text
    assert "gid minus the teacher-init" not in text  # only @msad methods start from the MSAD teacher
    ablation = next(line for line in text.splitlines() if line.startswith("| teacher-init ablation"))
    assert "| 24.0 / 25.0 / 25.5 |" in ablation and "(reference)" in ablation
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(csv_text(table)))}
    assert float(rows["msad_feature@msad"]["ablation_delta_mean"]) == pytest.approx(mean)
    assert float(rows["msad_feature@msad"]["control_delta_mean"]) == pytest.approx(2.0)
    assert rows["gid"]["ablation_delta_mean"] == "" and rows["teacher_init"]["p_holm"] == ""


def test_unfinished_runs_are_listed_and_left_out(tmp_path):
    request = make_request("same-resolution", methods=["adl"], seeds=[0, 1], out=tmp_path, quick=True)
    runs = planned_runs(request)["same-resolution"]
    for run in runs:
        if (run.model, run.seed) != ("adl", 1):
            write_fake_run(run, 20.0 + run.seed)
    table = collect(request)["same-resolution"]
    text = markdown(table)
    adl = next(line for line in text.splitlines() if line.startswith("| adl |"))
    # One seed paired: no interval is claimed.
    assert "20.0 / -" in adl and "[" not in adl
    assert "Unfinished (left out): adl seed 1." in text


def test_the_weight_shown_is_the_weight_the_runs_trained_with(tmp_path):
    request = make_request("same-resolution", methods=["adl"], seeds=[0, 1], out=tmp_path, quick=True)
    for run in planned_runs(request)["same-resolution"]:
        write_fake_run(run, 20.0)
        if run.model == "adl" and run.seed == 1:
            # Trained before tuning.json changed its choice: the table says what ran, seed by seed.
            config = run.run_dir / "config.yaml"
            config.write_text(config.read_text().replace("weight: 1.0", "weight: 0.25"))
    table = collect(request)["same-resolution"]
    adl = next(line for line in markdown(table).splitlines() if line.startswith("| adl |"))
    assert adl.startswith("| adl | 4 | 0.25x / 1x |")
