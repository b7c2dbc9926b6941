"""The traps a newcomer met in the first hour, each pinned: the short-run option, the configs
listing, the AP table's run column, short key lists in checkpoint errors, one AP table per
`msadkit evaluate`, pseudo-label files without a box, and the effectiveness scripts' one-seed cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from msadkit.analysis.ap_table import collect_runs, table_to_markdown
from msadkit.cli import main
from msadkit.config import load_config
from msadkit.config.catalog import config_description, packaged_config_catalog
from msadkit.config.run_length import scaled_solver
from msadkit.engine.semi_supervised.pseudo_label_check import refuse_empty_pseudo_labels
from msadkit.errors import ConfigError
from msadkit.utils.checkpoint import format_keys
from tests.conftest import load_benchmark_script

# --iterations ------------------------------------------------------------------------------------


def test_scaled_solver_keeps_the_schedule_shape():
    solver = {"max_iter": 300, "steps": [240, 280], "warmup_iters": 50}
    # 30/300 = 0.1: steps 24 and 28, warm-up 5.
    assert scaled_solver(solver, 30) == {"max_iter": 30, "steps": [24, 28], "warmup_iters": 5}
    # Longer runs scale up; a step never drops to 0 at tiny lengths.
    assert scaled_solver(solver, 600) == {"max_iter": 600, "steps": [480, 560], "warmup_iters": 100}
    assert scaled_solver(solver, 1) == {"max_iter": 1, "steps": [1, 1], "warmup_iters": 0}
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="iterations"):
            scaled_solver(solver, bad)


def test_a_changed_max_iter_relabels_the_schedule():
    assert load_config("fcos_demo")["schedule"] == "demo"
    assert load_config("fcos_demo", ["solver.max_iter=10"])["schedule"] == "demo-10it"
    assert load_config("fcos_demo", ["solver.max_iter=300"])["schedule"] == "demo"  # the file's own length
    assert load_config("fcos_demo", ["solver.max_iter=10", "schedule=mine"])["schedule"] == "mine"


def test_train_iterations_scales_warmup_and_steps(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_train(config, **kwargs):
        seen.update(config)
        return tmp_path

    monkeypatch.setattr("msadkit.engine.train.trainer.train", fake_train)
    assert main(["train", "fcos_demo", "--iterations", "30", "solver.base_lr=0.02"]) == 0
    solver = seen["solver"]
    assert (solver["max_iter"], solver["steps"], solver["warmup_iters"], solver["base_lr"]) == (30, [24, 28], 5, 0.02)
    assert seen["schedule"] == "demo-30it"
    assert main(["train", "fcos_demo", "--iterations", "0"]) == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err


# msadkit configs ---------------------------------------------------------------------------------


def test_config_description_is_the_first_sentence_on_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("# GID demo: the student\n# of a teacher. Second sentence.\n#\nmodel: {}\n# later comment\n")
    assert config_description(config) == "GID demo: the student of a teacher."
    config.write_text("# " + "word " * 40 + "\n")
    cut = config_description(config, width=30)
    assert cut.endswith("...") and len(cut) <= 30
    config.write_text("model: {}\n")
    assert config_description(config) == ""


def test_every_listed_config_has_a_description():
    catalog = packaged_config_catalog()
    assert catalog and all(description for _, description in catalog)
    assert not [name for name, _ in catalog if Path(name).name.startswith("base_")]
    assert len(packaged_config_catalog(include_bases=True)) > len(catalog)


# AP table ----------------------------------------------------------------------------------------


def test_ap_table_tells_identical_runs_apart(tmp_path):
    summary = {"method": "fcos", "role": "baseline", "schedule": "demo", "eval": {"AP": 4.9}}
    for name in ("fcos_s0", "fcos_s1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    rows = table_to_markdown(collect_runs([tmp_path / "fcos_s0", tmp_path / "fcos_s1"])).splitlines()
    assert rows[0].endswith("| run |")
    assert rows[2].endswith("| fcos_s0 |") and rows[3].endswith("| fcos_s1 |")


# checkpoint errors -------------------------------------------------------------------------------


def test_format_keys_names_ten_and_counts_the_rest():
    keys = [f"layer{i}.weight" for i in range(25)]
    assert format_keys(keys) == ", ".join(keys[:10]) + " and 15 more"
    assert format_keys(keys[:10]) == ", ".join(keys[:10])


# evaluate ----------------------------------------------------------------------------------------


def test_evaluate_prints_its_table_once(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    assert main(["train", "fcos_demo", *tiny_overrides(run, max_iter=1)]) == 0
    # Training logs the table once, and the log reaches the captured stderr: a second copy logged
    # by the evaluation itself would be counted below.
    trained = capsys.readouterr()
    assert (trained.out + trained.err).count("AP50") == 1
    assert main(["evaluate", str(run)]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("AP50") == 1
    assert "AP50" in captured.out


# empty pseudo-labels -----------------------------------------------------------------------------


def _pseudo_labels(path: Path, annotations: list) -> Path:
    path.write_text(json.dumps({"info": {"score_threshold": 0.4}, "images": [], "annotations": annotations,
                                "categories": []}))
    return path


def test_a_sad_run_refuses_an_empty_pseudo_label_file(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "eval.json").write_text(json.dumps({"AP": 0.04}))
    empty = _pseudo_labels(tmp_path / "empty.json", [])
    config = load_config("adl/retinanet_sad_demo", [f"distill.teacher={teacher}"])
    with pytest.raises(ConfigError) as caught:
        refuse_empty_pseudo_labels(config, empty)
    message = str(caught.value)
    for part in (str(empty), "scored >= 0.4", "AP 0.0", str(teacher / "eval.json"), "data.pseudo_labels_allow_empty"):
        assert part in message
    config["data"]["pseudo_labels_allow_empty"] = True
    refuse_empty_pseudo_labels(config, empty)
    config["data"]["pseudo_labels_allow_empty"] = False
    refuse_empty_pseudo_labels(config, _pseudo_labels(tmp_path / "one.json", [{"id": 1}]))


def test_pseudo_label_warns_when_it_writes_no_box(tmp_path, tiny_overrides, capsys):
    from PIL import Image

    run = tmp_path / "teacher"
    assert main(["train", "fcos_demo", *tiny_overrides(run, max_iter=1)]) == 0
    images = tmp_path / "unlabeled"
    images.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 160)).save(images / f"{index}.png")
    capsys.readouterr()
    out = tmp_path / "labels.json"
    # No sigmoid score reaches 1.0, so nothing is kept.
    args = ["pseudo-label", "--teacher", str(run), "--images", str(images), "--out", str(out), "--score-threshold", "1.0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "holds no box" in err and ">= 1" in err and str(run / "eval.json") in err
    assert json.loads(out.read_text())["annotations"] == []


# effectiveness scripts ---------------------------------------------------------------------------


def test_one_seed_shows_no_spread_and_no_gap_shows_no_share():
    common = load_benchmark_script("common")
    assert common.mean_std([4.25]) == "4.2"
    assert common.mean_std([4.0, 6.0]) == "5.0 ± 1.4"
    assert common.mean_std([0.5, 1.5], signed=True) == "+1.0 ± 0.7"
    assert common.mean_std([float("nan")]) == "n/a"
    msad = load_benchmark_script("msad_effectiveness")
    row = {"AP": 3.0, "APs": 1.0, "APm": 2.0, "APl": 4.0}
    table = msad.format_table({"fcos_high": [row], "fcos_low": [row], "msad_student": [row]})
    assert "±" not in table and "nan" not in table and "share of the gap closed: n/a" in table
