"""benchmarks/adl_gid_effectiveness.py: the jobs it plans and the target it applies (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark_script


@pytest.fixture(scope="module")
def script():
    return load_benchmark_script("adl_gid_effectiveness")


def _value(command: list[str], key: str) -> str | None:
    values = [item.split("=", 1)[1] for item in command if item.startswith(f"{key}=")]
    assert len(values) <= 1, f"{key} given twice in {command}"
    return values[0] if values else None


def test_pretrained_files_and_lr_reach_the_teacher_and_every_student(script, tmp_path):
    student_pt, teacher_pt = tmp_path / "w025.pt", tmp_path / "w05.pt"
    student_pt.write_bytes(b"x")
    teacher_pt.write_bytes(b"x")
    args = script.parse_args(["--out", str(tmp_path / "runs"), "--pretrained", str(student_pt), str(teacher_pt),
                              "--lr", "0.05"])
    teacher = list(script.teacher_job(args).command)
    assert _value(teacher, "model.backbone.weights") == str(teacher_pt)
    assert _value(teacher, "solver.base_lr") == "0.05"
    assert teacher[4] == "gid/fcos_teacher_demo"  # the width-0.5 teacher config
    teacher_dir = tmp_path / "runs" / "teacher"
    for method in script.LABELS:
        command = list(script.student_job(args, method, 1).command)
        assert _value(command, "model.backbone.weights") == str(student_pt)
        assert _value(command, "solver.base_lr") == "0.05"
        assert _value(command, "trainer.seed") == "1"
        assert _value(command, "distill.teacher") == (None if method == "baseline" else str(teacher_dir))
        expected_labels = str(teacher_dir / "pseudo_labels.json") if method == "sad" else None
        assert _value(command, "data.pseudo_labels_json") == expected_labels
    pseudo_labels = script.pseudo_label_job(args)
    assert pseudo_labels.command[-1] == str(teacher_dir / "pseudo_labels.json")
    assert pseudo_labels.needs == ("teacher",) and pseudo_labels.output_paths() == [teacher_dir / "pseudo_labels.json"]
    # Named files are the caller's: the sweep trains no pretraining job for them.
    assert not [job for job in script.plan(args) if job.name.startswith("pretrain")]


def test_auto_pretrained_gives_the_teacher_the_width_half_file_made_first(script, tmp_path, monkeypatch):
    monkeypatch.setenv("MSADKIT_CACHE", str(tmp_path / "cache"))  # empty: both files still to make
    from msadkit.engine.train.pretrain import PretrainSettings, cached_pretrained_path

    args = script.parse_args(["--out", str(tmp_path / "runs")])
    assert args.lr == 0.03 and args.pretrained == ["auto"]
    half, quarter = cached_pretrained_path(PretrainSettings(width=0.5)), cached_pretrained_path(PretrainSettings())
    assert half != quarter and "w0.5" in half.name and "w0.25" in quarter.name
    assert _value(list(script.teacher_job(args).command), "model.backbone.weights") == str(half)
    assert _value(list(script.student_job(args, "gid", 0).command), "model.backbone.weights") == str(quarter)
    assert _value(list(script.teacher_job(args).command), "solver.base_lr") == "0.03"

    queue = script.plan(args)
    names = [job.name for job in queue]
    by_name = {job.name: job for job in queue}
    assert names[:3] == ["pretrain width 0.5", "pretrain width 0.25", "teacher"]
    assert by_name["pretrain width 0.5"].command[-2:] == ("--width", "0.5")
    assert by_name["teacher"].needs == ("pretrain width 0.5",)
    assert set(by_name["baseline seed 0"].needs) == {"pretrain width 0.25"}
    assert set(by_name["sad seed 2"].needs) == {"pseudo-labels", "pretrain width 0.25"}
    assert set(by_name["adl seed 2"].needs) == {"teacher", "pretrain width 0.25"}
    # Baselines fill the second slot while the teacher trains; pseudo-labels come before the students.
    assert names.index("baseline seed 2") < names.index("pseudo-labels") < names.index("adl seed 0")

    none = script.parse_args(["--out", str(tmp_path / "runs"), "--pretrained", "none"])
    assert _value(list(script.student_job(none, "adl", 0).command), "model.backbone.weights") is None
    assert not [job for job in script.plan(none) if job.name.startswith("pretrain")]
    # Without SAD no pseudo-labels are made.
    no_sad = script.parse_args(["--out", str(tmp_path / "runs"), "--pretrained", "none", "--methods", "adl"])
    assert "pseudo-labels" not in [job.name for job in script.plan(no_sad)]


def test_tuning_seed_trains_one_seed_into_its_own_folder_beside_the_shared_teacher(script, tmp_path):
    out = tmp_path / "runs"
    args = script.parse_args(["--out", str(out), "--tuning-seed", "--pretrained", "none"])
    assert args.seeds == [100]
    students = [job for job in script.plan(args) if "seed" in job.name]
    assert {job.run_dir.parent for job in students} == {out / "tuning"}
    assert {job.run_dir.name for job in students} == {f"{m}_s100" for m in script.LABELS}
    assert script.teacher_job(args).run_dir == out / "teacher"
    assert _value(list(script.student_job(args, "adl", 100).command), "distill.teacher") == str(out / "teacher")
    reported = script.parse_args(["--out", str(out), "--pretrained", "none"])
    assert {job.run_dir.parent for job in script.plan(reported) if "seed" in job.name} == {out}
    with pytest.raises(SystemExit) as error:
        script.parse_args(["--out", str(out), "--tuning-seed", "2"])  # a reported seed
    assert error.value.code == 2
    with pytest.raises(SystemExit):
        script.parse_args(["--pretrained", str(tmp_path / "missing.pt")])


def _write_ap(folder: Path, ap: float) -> None:
    folder.mkdir(parents=True)
    metrics = dict.fromkeys(("AP50", "AP75", "APs", "APm"), 1.0) | {"AP": ap, "APl": float("nan")}
    (folder / "eval.json").write_text(json.dumps(metrics))


def test_gain_is_paired_by_seed_and_the_target_needs_one_ap_and_two_sample_stds(script, tmp_path):
    out = tmp_path / "runs"
    aps = {
        "baseline": [10.0, 11.0, 12.0],
        "adl": [11.5, 12.4, 13.6],  # diffs 1.5 1.4 1.6: mean 1.5, sample std 0.1 -> PASS
        "sad": [10.5, 11.5, 12.5],  # diffs 0.5 each: std 0 but gain < 1 -> MISSED
        # diffs 0.9 2.0 3.1: mean 2.0, sample std 1.1 (2 std 2.2 > 2.0) -> MISSED; the population
        # std (n) would be 0.90 and pass it, so this row tells n-1 from n.
        "gid": [10.9, 13.0, 15.1],
    }
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            _write_ap(out / f"{method}_s{seed}", ap)
    args = script.parse_args(["--out", str(out), "--pretrained", "none", "--methods", *aps])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in script.format_table(args).splitlines() if line.startswith("| ")}
    assert rows["+ ADL"][0] == "3" and rows["+ ADL"][1] == "12.5 ± 1.1"
    assert rows["+ ADL"][-2:] == ["+1.5 ± 0.1", "PASS"]
    assert rows["+ ADL with pseudo-labels (SAD)"][-2:] == ["+0.5 ± 0.0", "MISSED"]
    assert rows["+ GID"][-2:] == ["+2.0 ± 1.1", "MISSED"]
    assert rows["student baseline (width 0.25)"][-2:] == ["", ""]

    diffs, verdict = script.paired_gain({0: 10.0, 1: 11.0, 2: 12.0}, {0: 11.5, 2: 13.6})  # seed 1 missing
    assert diffs == pytest.approx([1.5, 1.6]) and verdict == "PASS"
    assert script.paired_gain({100: 5.0}, {100: 6.2})[1] == "gain >= 1 (1 seed, no std)"
    assert script.paired_gain({100: 5.0}, {100: 5.5})[1] == "gain < 1 (1 seed, no std)"


def test_tuning_table_is_marked_and_written_under_its_own_heading(script, tmp_path):
    out = tmp_path / "runs"
    _write_ap(out / "tuning" / "baseline_s100", 20.0)
    _write_ap(out / "tuning" / "gid_s100", 22.5)
    tuning = script.parse_args(["--out", str(out), "--pretrained", "none", "--tuning-seed"])
    table = script.format_table(tuning)
    assert "Tuning seed 100" in table
    assert "| + GID | 1 (tuning) |" in table and "+2.5 | gain >= 1 (1 seed, no std) |" in table

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    write_results = load_benchmark_script("effectiveness").write_results
    write_results(results, script.HEADING, "reported v1")
    write_results(results, script.TUNING_HEADING, table)
    write_results(results, script.HEADING, "reported v2")
    text = results.read_text()
    assert text.count(script.HEADING + "\n") == 1 and "reported v2" in text and "reported v1" not in text
    assert text.count(script.TUNING_HEADING + "\n") == 1 and "Tuning seed 100" in text and "kept" in text


def test_a_finished_run_with_other_settings_stops_the_sweep(script, tmp_path):
    from msadkit.jobs import JobConfigMismatchError, ReuseDecision, decide_reuse

    out = tmp_path / "runs"
    args = script.parse_args(["--out", str(out), "--pretrained", "none", "--methods", "baseline", "--seeds", "0"])
    job = next(job for job in script.plan(args) if job.name == "baseline seed 0")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "model_final.pth").write_bytes(b"weights")
    (job.run_dir / "eval.json").write_text('{"AP": 1.0}')
    (job.run_dir / "job.json").write_text(json.dumps({"status": "finished", "config": job.config}))
    assert decide_reuse(job) is ReuseDecision.REUSE  # same settings: reused
    other = script.parse_args(["--out", str(out), "--pretrained", "none", "--lr", "0.01"])
    changed = next(job for job in script.plan(other) if job.name == "baseline seed 0")
    with pytest.raises(JobConfigMismatchError, match=r"solver\.base_lr is 0\.03 there, 0\.01 requested"):
        decide_reuse(changed)


def test_a_method_override_reaches_only_that_method_so_the_teacher_stays_reusable(script, tmp_path):
    out = tmp_path / "runs"
    plain = script.parse_args(["--out", str(out), "--pretrained", "none"])
    weight = "distill.losses=[{type: adl, weight: 3.0}]"
    tried = script.parse_args(["--out", str(out), "--pretrained", "none", "--set", f"adl:{weight}"])
    assert weight in script.student_job(tried, "adl", 0).command
    for method in ("baseline", "sad", "gid"):
        assert script.student_job(tried, method, 0) == script.student_job(plain, method, 0)
    assert script.teacher_job(tried) == script.teacher_job(plain)  # command and resolved config alike
    with pytest.raises(SystemExit):
        script.parse_args(["--set", "adl_w3:solver.base_lr=0.1"])  # no such method
