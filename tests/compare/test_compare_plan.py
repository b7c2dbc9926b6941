"""Planning a comparison: which runs, one seed's shared start, the step-matched control's length,
cross-resolution where the teacher is plain, the tuning runs and the weights tuning.json chooses."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from msadkit.compare import launch_order, make_request, planned_runs, pretrain_jobs, tuning_runs
from msadkit.compare.plan import ABLATION, BASELINE, CONTROL, METHOD, REPORT_DIR, TEACHER, jobs_of
from msadkit.compare.tuning import TUNING_NAME, choose_scale, write_tuning
from msadkit.errors import ConfigError


def _by(runs):
    return {(run.model, run.seed): run for run in runs}


def test_same_resolution_plan_trains_each_model_once_per_seed_from_one_start(tmp_path):
    request = make_request("same-resolution", methods=["adl", "gid+msad_feature"], seeds=[0, 1], out=tmp_path,
                           iterations=20, teacher_iterations=40)
    runs = planned_runs(request)["same-resolution"]
    assert sorted((run.model, run.seed) for run in runs) == sorted(
        (model, seed) for model in ("teacher", "baseline", "control", "adl", "gid+msad_feature") for seed in (0, 1))
    # Launch order: the teachers first (the methods wait for them), then the long controls.
    assert [run.kind for run in runs[:4]] == [TEACHER, TEACHER, CONTROL, CONTROL]
    by = _by(runs)
    weights = {0.25: str(tmp_path / "pretrained" / "slimmable_r50_w0.25.pt"),
               0.5: str(tmp_path / "pretrained" / "slimmable_r50_w0.5.pt")}
    for seed in (0, 1):
        students = [by[(model, seed)].job.config for model in ("baseline", "control", "adl", "gid+msad_feature")]
        teacher = by[("teacher", seed)].job.config
        # One seed, one start: the same trainer.seed, dataset and pretrained backbone file for every student.
        assert {c["trainer"]["seed"] for c in [*students, teacher]} == {seed}
        assert {c["model"]["backbone"]["weights"] for c in students} == {weights[0.25]}
        assert {json.dumps(c["data"], sort_keys=True) for c in [*students, teacher]} == {
            json.dumps(teacher["data"], sort_keys=True)}
        assert teacher["model"]["backbone"]["weights"] == weights[0.5] and teacher["model"]["backbone"]["width"] == 0.5
        assert {c["model"]["backbone"]["width"] for c in students} == {0.25}
        for model in ("adl", "gid+msad_feature"):
            run = by[(model, seed)]
            assert run.job.config["distill"]["teacher"] == str(by[("teacher", seed)].run_dir)
            assert f"same-resolution teacher seed {seed}" in run.job.needs
            assert run.job.config["distill"]["cross_resolution"] is False
    assert [e["type"] for e in by[("gid+msad_feature", 0)].job.config["distill"]["losses"]] == ["gid", "msad_feature"]
    assert by[("baseline", 0)].job.config["distill"]["teacher"] is None
    # Lengths: one budget; the control trains teacher + student iterations.
    lengths = {run.model: run.job.config["solver"]["max_iter"] for run in runs}
    assert lengths == {"teacher": 40, "baseline": 20, "control": 60, "adl": 20, "gid+msad_feature": 20}
    # Every run validates at 3/4 of its own length (the plateau mark reads it and the final AP).
    assert {run.model: run.job.config["trainer"]["eval_period"] for run in runs} == {
        "teacher": 30, "baseline": 15, "control": 45, "adl": 15, "gid+msad_feature": 15}
    pretrain = pretrain_jobs(tmp_path, request.tracks, request.budgets)
    assert sorted(job.name for job in pretrain) == ["pretrain width 0.25", "pretrain width 0.5"]
    assert all("pretrain width 0.25" in by[(m, 0)].job.needs for m in ("baseline", "control", "adl"))


def test_every_run_is_evaluated_after_training_on_the_larger_split_with_its_bootstrap(tmp_path):
    request = make_request("cross-resolution", methods=["gid"], seeds=[0, 1], out=tmp_path, bootstrap_samples=50)
    budget = request.budgets["cross-resolution"]
    assert (budget.num_val, budget.num_report_val, budget.reported_val) == (64, 640, 640)
    runs = planned_runs(request)["cross-resolution"]
    plan = jobs_of([], runs)
    position = {job.name: k for k, job in enumerate(plan)}
    for run in runs:
        report = run.report
        assert report is not None and run.result_dir == run.run_dir / REPORT_DIR == report.run_dir
        # After its own run, before the next run: the evaluation starts as soon as its run is done.
        assert report.needs == (run.job.name,) and position[report.name] == position[run.job.name] + 1
        assert report.command[3:] == ("evaluate", str(run.run_dir), "data.synthetic.num_val=640", "--output-dir",
                                      str(run.result_dir), "--device", "cpu", "--bootstrap", "50")
        # Training itself still validates on the 64-image split (the plateau mark's).
        assert run.job.config["data"]["synthetic"]["num_val"] == 64
    without = replace(request, budgets={"cross-resolution": replace(budget, num_report_val=0)})
    assert all(run.report is None and run.result_dir == run.run_dir for run in planned_runs(without)["cross-resolution"])
    with pytest.raises(ConfigError, match="--num-report-val must be a whole number >= 0, got -1"):
        replace(budget, num_report_val=-1).check()


def test_cross_resolution_plan_pairs_plain_teachers_across_resolutions_and_msad_from_its_teacher(tmp_path):
    request = make_request("cross-resolution", methods=["msad_feature@msad", "gid"], seeds=[3, 4], out=tmp_path,
                           iterations=10, teacher_iterations=30)
    runs = planned_runs(request)["cross-resolution"]
    by = _by(runs)
    assert {run.model for run in runs} == {"fcos_high", "msad_teacher", "baseline", "control", "teacher_init",
                                           "msad_feature@msad", "gid"}
    for seed in (3, 4):
        msad, gid = by[("msad_feature@msad", seed)].job.config, by[("gid", seed)].job.config
        assert msad["distill"]["teacher"] == str(by[("msad_teacher", seed)].run_dir)
        assert msad["distill"]["init_student_from_teacher"] is True and msad["distill"]["cross_resolution"] is False
        assert gid["distill"]["teacher"] == str(by[("fcos_high", seed)].run_dir)
        assert gid["distill"]["cross_resolution"] is True and gid["distill"]["init_student_from_teacher"] is False
        for model in ("baseline", "control", "msad_feature@msad", "gid"):
            config = by[(model, seed)].job.config
            assert config["model"]["resolution"] == "low" and config["data"]["size_divisibility"] == 256
            assert config["trainer"]["seed"] == seed
        assert by[("fcos_high", seed)].job.config["model"]["resolution"] == "high"
        assert by[("msad_teacher", seed)].job.config["model"]["arch"] == "msad_teacher"
        # MSAD's ablation: the @msad student's start, teacher and terms, every term at weight 0.
        ablation = by[("teacher_init", seed)]
        assert ablation.kind == ABLATION and ablation.scale is None and ablation.iterations == 10
        assert ablation.job.config["distill"]["teacher"] == msad["distill"]["teacher"]
        assert ablation.job.config["distill"]["init_student_from_teacher"] is True
        assert [(t["type"], t["weight"]) for t in ablation.job.config["distill"]["losses"]] == [("msad_feature", 0.0)]
        assert [t["weight"] for t in msad["distill"]["losses"]] == [1.0]
    # The step-matched control: as many iterations as the teacher the student starts from, plus its own.
    assert by[("control", 3)].job.config["solver"]["max_iter"] == 40
    assert by[("baseline", 3)].job.config["solver"]["max_iter"] == 10
    assert by[("msad_teacher", 3)].job.config["solver"]["max_iter"] == 30
    assert {run.kind for run in runs} == {TEACHER, BASELINE, CONTROL, ABLATION, METHOD}


def test_cross_resolution_without_an_msad_method_trains_only_the_plain_teacher(tmp_path):
    request = make_request("cross-resolution", methods=["fitnet"], seeds=[0, 1], out=tmp_path, quick=True)
    assert {run.model for run in planned_runs(request)["cross-resolution"]} == {
        "fcos_high", "baseline", "control", "fitnet"}


def test_tuning_runs_three_weights_on_the_tuning_seed_and_reported_runs_use_the_choice(tmp_path):
    request = make_request("same-resolution", methods=["fitnet"], seeds=[0, 1], tuning_seed=100, out=tmp_path,
                           quick=True)
    track = request.tracks[0]
    runs = tuning_runs(tmp_path, track, request.methods[track.name], 100, request.budgets[track.name])
    methods = [run for run in runs if run.kind == METHOD]
    assert {run.seed for run in runs} == {100}
    assert sorted(run.scale for run in methods) == [0.25, 1.0, 4.0]
    assert sorted(run.job.config["distill"]["losses"][0]["weight"] for run in methods) == [0.25, 1.0, 4.0]
    assert all("/tuning/seed100/" in str(run.run_dir) for run in runs)
    assert choose_scale({1.0: 20.0, 0.25: 21.5, 4.0: None}) == 0.25
    assert choose_scale({1.0: 20.0, 0.25: 20.0}) == 1.0  # a tie keeps the official weight
    assert choose_scale({1.0: None}) is None

    write_tuning(tmp_path / "same-resolution", {"tuning_seed": 100, "methods": {
        "fitnet": {"candidates": [], "chosen_scale": 4.0}}})
    reported = _by(planned_runs(request)["same-resolution"])
    assert reported[("fitnet", 0)].scale == 4.0
    assert reported[("fitnet", 1)].job.config["distill"]["losses"][0]["weight"] == 4.0
    other = make_request("same-resolution", methods=["fitnet"], seeds=[0, 1], tuning_seed=7, out=tmp_path, quick=True)
    with pytest.raises(ConfigError, match="--tuning-seed 7: tuning.json was made on seed 100"):
        planned_runs(other)
    assert (tmp_path / "same-resolution" / TUNING_NAME).is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["gidd"]}, r"--methods: unknown distillation term 'gidd' in 'gidd' \(did you mean 'gid'\?\)"),
    ({"methods": ["gid+"]}, r"--methods: 'gid\+' has an empty term"),
    ({"methods": ["msad_feature@msad"]}, r"--methods: 'msad_feature@msad': @msad .* cross-resolution track only"),
    ({"methods": ["gid", "gid"]}, r"--methods: gid named twice"),
    ({"seeds": [0]}, r"--seeds: a paired comparison needs at least 2 seeds, got 1"),
    ({"seeds": [0, 0]}, r"--seeds: a seed is repeated"),
    ({"seeds": [0, 100]}, r"--tuning-seed 100 is one of the reported --seeds"),
    ({"iterations": 0}, r"--iterations must be a positive whole number"),
])
def test_bad_requests_name_the_argument(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_request("same-resolution", out=tmp_path, **kwargs)


def test_a_track_typo_names_the_closest_track(tmp_path):
    with pytest.raises(ConfigError, match=r"--track: unknown track 'same-res' \(did you mean 'same-resolution'\?\)"):
        make_request(["same-res"], out=tmp_path)
    with pytest.raises(ConfigError, match=r"^track: unknown track"):
        make_request("sideways", out=tmp_path, cli=False)
    assert [t.name for t in make_request("both", out=tmp_path).tracks] == ["same-resolution", "cross-resolution"]


def test_launch_order_runs_references_first_then_methods_seed_by_seed_across_tracks(tmp_path):
    request = make_request("both", methods=["gid"], seeds=[7, 3], out=tmp_path, quick=True)
    order = [(run.kind, run.track, run.seed) for run in launch_order(request, planned_runs(request))]
    kinds = [kind for kind, _, _ in order]
    # Every teacher, control and baseline before any method: the methods need them, the table pairs with them.
    assert kinds == sorted(kinds, key=[TEACHER, CONTROL, BASELINE, METHOD].index)
    methods = [(track, seed) for kind, track, seed in order if kind == METHOD]
    # Seed 7 of both tracks before seed 3 of either (the order --seeds gives).
    assert methods == [("same-resolution", 7), ("cross-resolution", 7), ("same-resolution", 3),
                       ("cross-resolution", 3)]
