"""benchmarks/msad_effectiveness.py without training: the runs it plans, its sweep order, its target arithmetic."""

import json
from pathlib import Path

import pytest

from msadkit.config import load_config
from tests.conftest import load_benchmark_script


@pytest.fixture(scope="module")
def bench():
    return load_benchmark_script("msad_effectiveness")


def _args(bench, out: Path, *argv: str, pretrained: Path | None = None):
    args = bench.build_parser().parse_args(["--out", str(out), *argv])
    args.pretrained = pretrained  # what main() makes of --pretrained
    return args


def _value(command: list[str], key: str) -> str | None:
    found = [item.split("=", 1)[1] for item in command if item.startswith(key + "=")]
    return found[-1] if found else None


def _jobs(bench, args) -> dict:
    return {job.name: job for job in bench.plan(args)}


def test_every_run_gets_its_length_seed_lr_backbone_and_teacher(bench, tmp_path):
    weights = tmp_path / "backbone.pt"
    args = _args(bench, tmp_path / "runs", "--teacher-iters", "40", "--iters", "25", "--lr", "0.03", pretrained=weights)
    lengths = {"fcos_high": 40, "fcos_low": 25, "fcos_low_matched": 65, "msad_teacher": 40, "msad_student": 25,
               "msad_student_no_kd": 25}
    configs = {"fcos_high": "msad/fcos_high_demo", "fcos_low": "msad/fcos_low_demo",
               "fcos_low_matched": "msad/fcos_low_demo", "msad_teacher": "msad/msad_teacher_demo",
               "msad_student": "msad/msad_student_demo", "msad_student_no_kd": "msad/msad_student_demo"}
    assert set(bench.MODELS) == set(lengths) == set(bench.PRIORITY)
    jobs = _jobs(bench, args)
    for method, length in lengths.items():
        job = jobs[f"{method} seed 2"]
        command = list(job.command)
        assert command[3:5] == ["train", configs[method]]
        assert command[command.index("--iterations") + 1] == str(length)
        assert job.run_dir == tmp_path / "runs" / f"{method}_s2"
        assert command[command.index("--output-dir") + 1] == str(job.run_dir)
        assert _value(command, "trainer.seed") == "2"
        assert _value(command, "solver.base_lr") == "0.03"
        assert _value(command, "model.backbone.weights") == str(weights)
        # The config the run will train, as `msadkit train` resolves it: what the reuse rule compares.
        assert job.config["solver"]["max_iter"] == length and job.config["trainer"]["seed"] == 2
        assert job.config["output_dir"] == str(job.run_dir)
        teacher = _value(command, "distill.teacher")
        if method in ("msad_student", "msad_student_no_kd"):
            assert teacher == str(tmp_path / "runs" / "msad_teacher_s2")  # its own seed's teacher
            assert job.needs == ("msad_teacher seed 2",)
        else:
            assert teacher is None and job.needs == ()
        # Only the ablation changes the KD term; the student keeps its config's.
        assert (_value(command, "distill.losses") is not None) == (method == "msad_student_no_kd")

    scratch = _args(bench, tmp_path / "runs", pretrained=None)
    scratch_jobs = _jobs(bench, scratch)
    assert _value(list(scratch_jobs["fcos_high seed 0"].command), "model.backbone.weights") is None
    assert scratch_jobs["fcos_low_matched seed 0"].config["solver"]["max_iter"] == 900  # defaults: 450 + 450


def test_the_teachers_go_first_and_each_student_waits_for_its_seeds_teacher(bench, tmp_path):
    args = _args(bench, tmp_path, "--seeds", "0", "1", pretrained=None)
    names = [job.name for job in bench.plan(args)]
    assert names[:2] == ["msad_teacher seed 0", "msad_teacher seed 1"]
    assert len(names) == 12 and names[-2:] == ["fcos_low seed 0", "fcos_low seed 1"]


def test_ablation_config_equals_the_students_but_for_the_kd_weight(bench, tmp_path):
    args = _args(bench, tmp_path, "solver.batch_size=4", pretrained=tmp_path / "w.pt")
    student = load_config("msad/msad_student_demo", bench.overrides(args, "msad_student", 1))
    ablation = load_config("msad/msad_student_demo", bench.overrides(args, "msad_student_no_kd", 1))
    assert ablation["distill"]["losses"] == [{"type": "msad_feature", "weight": 0.0}]
    assert student["distill"]["losses"][0]["weight"] == 1.0
    assert ablation["distill"]["init_student_from_teacher"] is True
    assert ablation["distill"]["teacher"] == student["distill"]["teacher"]
    for config in (student, ablation):
        del config["distill"]["losses"], config["output_dir"]
    assert ablation == student
    assert student["solver"]["batch_size"] == 4  # the overrides for every run reach it

    low = load_config("msad/fcos_low_demo", bench.overrides(args, "fcos_low", 1))
    matched = load_config("msad/fcos_low_demo", bench.overrides(args, "fcos_low_matched", 1))
    assert matched["distill"]["teacher"] is None and not matched["distill"]["init_student_from_teacher"]
    assert matched["trainer"]["checkpoint_period"] == 900 and low["trainer"]["checkpoint_period"] == 450


def _write_run(out: Path, method: str, seed: int, ap: float) -> None:
    folder = out / f"{method}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps({"AP": ap, "APs": ap / 2, "APm": ap, "APl": ap * 1.5}))


def _write_table(out: Path, aps: dict[str, list[float]]) -> None:
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            _write_run(out, method, seed, ap)


def test_targets_pass(bench, tmp_path):
    _write_table(tmp_path, {
        "fcos_high": [30.0, 32.0, 31.0],
        "fcos_low": [26.0, 27.0, 28.0],  # gap 4, 5, 3: mean 4 >= 3
        "fcos_low_matched": [28.0, 29.0, 30.0],  # high - matched 2, 3, 1: half the mean is 1.0
        "msad_student": [29.5, 30.5, 31.0],  # student - matched 1.5, 1.5, 1.0: mean 1.33 >= 1.0
        "msad_student_no_kd": [28.5, 29.3, 30.2],  # KD gain 1.0, 1.2, 0.8: mean 1.0 > 2 x std 0.2
    })
    gap, matched, kd = bench.target_checks(bench.results(tmp_path, [0, 1, 2]))
    assert (gap.passed, matched.passed, kd.passed) == (True, True, True)
    assert "seed 0 +4.0, seed 1 +5.0, seed 2 +3.0; mean +4.0 ± 1.0" in gap.text and "3 of 3" in gap.text
    assert "= +1.00" in matched.text and "3 of 3" in matched.text
    assert "mean +1.0 ± 0.2" in kd.text and "= 0.40" in kd.text
    table = bench.format_table(bench.results(tmp_path, [0, 1, 2]), {"fcos_high": "40"})
    assert "| FCOS high-res (256 px) | 40 | 3 | 31.0 ± 1.0 | 15.5 ± 0.5 | 31.0 ± 1.0 | 46.5 ± 1.5 |" in table
    assert table.count("**PASS**") == 3


def test_targets_missed(bench, tmp_path):
    _write_table(tmp_path, {
        "fcos_high": [30.0, 31.0, 32.0],
        "fcos_low": [28.0, 29.0, 29.0],  # gap 2, 2, 3: mean 2.33 < 3, though seed 2 alone meets it
        "fcos_low_matched": [29.0, 30.0, 31.0],  # high - matched 1, 1, 1: half is 0.5
        "msad_student": [29.25, 30.25, 31.25],  # student - matched 0.25 each < 0.5
        # KD gain 1.5, 2.5, 0.5: mean 1.5 is not > 2 x std 1.0 (it is > 2 x the standard error 0.58)
        "msad_student_no_kd": [27.75, 27.75, 30.75],
    })
    gap, matched, kd = bench.target_checks(bench.results(tmp_path, [0, 1, 2]))
    assert (gap.passed, matched.passed, kd.passed) == (False, False, False)
    assert "1 of 3" in gap.text and "0 of 3" in matched.text
    assert "mean +1.5 ± 1.0" in kd.text and "= 2.00" in kd.text
    assert bench.format_table(bench.results(tmp_path, [0, 1, 2])).count("**MISSED**") == 3


def test_targets_pair_by_seed_and_need_two_seeds_for_the_kd_spread(bench, tmp_path):
    _write_table(tmp_path, {"fcos_high": [30.0, 20.0], "fcos_low": [26.0], "msad_student": [25.0],
                            "msad_student_no_kd": [24.0]})
    gap, matched, kd = bench.target_checks(bench.results(tmp_path, [0, 1]))
    assert gap.passed is True and "seed 0 +4.0; mean +4.0;" in gap.text  # seed 1 has no low-res run
    assert matched.passed is None and kd.passed is None
    assert "**n/a**" in kd.line()


def test_a_finished_run_is_reused_with_the_same_config_and_refused_with_another(bench, tmp_path):
    from msadkit.jobs import JobConfigMismatchError, ReuseDecision, decide_reuse

    job = _jobs(bench, _args(bench, tmp_path, "--iters", "25", pretrained=None))["fcos_low seed 0"]
    job.run_dir.mkdir()
    (job.run_dir / "model_final.pth").write_bytes(b"weights")
    (job.run_dir / "eval.json").write_text('{"AP": 1.0}')
    (job.run_dir / "job.json").write_text(json.dumps({"status": "finished", "config": job.config}))
    assert decide_reuse(job) is ReuseDecision.REUSE
    longer = _jobs(bench, _args(bench, tmp_path, "--iters", "300", pretrained=None))["fcos_low seed 0"]
    refused_message = r"fcos_low_s0 holds a finished run .*solver\.max_iter is 25 there, 300 requested"
    with pytest.raises(JobConfigMismatchError, match=refused_message) as refused:
        decide_reuse(longer)
    assert "solver.max_iter" in refused.value.keys and "solver.base_lr" not in refused.value.keys


class _Outcome:
    def __init__(self, job, status: str) -> None:
        self.job, self.status, self.wall_s = job, status, 60.0
        self.ok = status in ("finished", "reused")


def test_main_runs_the_plan_logs_the_invocation_and_reports_failures(bench, tmp_path, monkeypatch, capsys):
    # The runner itself is tested in tests/jobs; here only what the script does with its outcomes.
    import benchmarks.effectiveness as effectiveness

    calls = []

    def fake_run_jobs(plan, **options):
        calls.append(options)
        for job in plan:
            if job.name.startswith("fcos_high"):
                job.run_dir.mkdir(parents=True)
                (job.run_dir / "eval.json").write_text('{"AP": 20.0, "APs": 1.0, "APm": 2.0, "APl": 3.0}')
        return [_Outcome(job, "failed" if job.name == "msad_teacher seed 0" else "finished") for job in plan]

    monkeypatch.setattr(effectiveness, "run_jobs", fake_run_jobs)
    out, results = tmp_path / "runs", tmp_path / "RESULTS.md"
    status = bench.main(["--out", str(out), "--seeds", "0", "--pretrained", "none", "--jobs", "3", "--threads", "2",
                         "--results", str(results)])
    captured = capsys.readouterr()
    assert status == 1 and "1 job(s) failed or were skipped: msad_teacher seed 0" in captured.err
    assert calls[0]["max_parallel"] == 3 and calls[0]["threads"] == 2
    assert "fcos_high: 1.0 min per run (mean of 1)" in captured.out
    assert "| FCOS high-res (256 px) |  | 1 | 20.0 | 1.0 | 2.0 | 3.0 |" in captured.out
    assert len((out / "sweeps.jsonl").read_text().splitlines()) == 1
    assert bench.HEADING in results.read_text()


def test_markdown_section_is_replaced_in_place(tmp_path):
    common = load_benchmark_script("common")
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Before\n\nkept\n\n## Mine\n\nold table\n\n## After\n\nkept too\n")
    common.replace_markdown_section(path, "## Mine", "new table\n")
    assert path.read_text() == "# Results\n\n## Before\n\nkept\n\n## Mine\n\nnew table\n\n## After\n\nkept too\n"
    common.replace_markdown_section(path, "## Other", "appended")
    assert path.read_text().endswith("## After\n\nkept too\n\n## Other\n\nappended\n")
