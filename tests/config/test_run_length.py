"""One rule scales every count of iterations of a config with the run length, for
`msadkit train --iterations` and the notebooks alike, and no iteration-valued key escapes it."""

from __future__ import annotations

from typing import Any

import pytest

import msadkit.distill.registry  # noqa: F401  (registers the terms' options)
from msadkit.cli import main
from msadkit.config import load_config
from msadkit.config.defaults import DEFAULTS
from msadkit.config.run_length import (
    ITERATION_NAME,
    LENGTH_KEY,
    NOT_SCALED,
    PERIOD_KEYS,
    SCHEDULE_KEYS,
    TERM_ITERATION_OPTIONS,
    run_length_overrides,
    scaled_run_length,
)
from msadkit.config.sections import LIST_ITEM_OPTIONS
from msadkit.errors import ConfigError
from msadkit.notebook.training import notebook_config


def dotted_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            keys += dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_every_iteration_valued_key_is_scaled_or_said_not_to_be():
    covered = {LENGTH_KEY, *SCHEDULE_KEYS, *PERIOD_KEYS, *NOT_SCALED}
    in_defaults = [key for key in dotted_keys(DEFAULTS) if ITERATION_NAME.search(key.rsplit(".", 1)[-1])]
    assert in_defaults, "the name rule finds nothing: it is broken"
    assert sorted(set(in_defaults) - covered) == [], "add the key to run_length's lists (scaled or NOT_SCALED)"
    options = {option for term in LIST_ITEM_OPTIONS["distill.losses"].values() for option in term}
    iteration_options = {option for option in options if ITERATION_NAME.search(option)}
    assert "ramp_iters" in iteration_options
    assert iteration_options - set(TERM_ITERATION_OPTIONS) - set(NOT_SCALED) == set()
    # And nothing listed is stale.
    assert covered - set(dotted_keys(DEFAULTS)) == set()


def test_a_short_student_reaches_full_distillation_weight():
    config = load_config("msad/msad_student_demo")  # max_iter 300, warm-up 50, ramp 50, log 10, checkpoints 100
    settings = scaled_run_length(config, 40)
    assert settings["solver"] == {"max_iter": 40, "steps": [32, 37], "warmup_iters": 7}
    assert settings["distill"]["losses"][0]["ramp_iters"] == 7
    # Periods inside the new run stay; one that fitted the old run but not the new one is scaled.
    assert settings["trainer"] == {"checkpoint_period": 13}


def test_periods_scale_only_where_they_stop_fitting():
    config = load_config("fcos_demo", ["trainer.eval_period=50", "trainer.checkpoint_period=1000"])
    trainer = scaled_run_length(config, 40).get("trainer", {})
    assert trainer["eval_period"] == 7  # 50 of 300 -> 7 of 40: still six validations, not none
    assert "checkpoint_period" not in trainer  # past the config's own run: "no periodic checkpoint" stays
    assert "log_period" not in trainer  # every 10 fits 40
    assert scaled_run_length(config, 3000).get("trainer") is None  # a longer run keeps every period


def test_a_term_left_at_its_default_ramp_gets_the_scaled_default_written_in():
    config = load_config("msad/msad_student_demo", ["distill.losses=[{type: msad_feature}]"])
    losses = scaled_run_length(config, 30)["distill"]["losses"]
    assert losses == [{"type": "msad_feature", "ramp_iters": 50}]  # 500 of 300 iterations -> 50 of 30


def test_the_full_length_changes_nothing():
    config = load_config("msad/msad_student_demo")
    assert load_config("msad/msad_student_demo", run_length_overrides(config, 300)) == config


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "40"])
def test_a_bad_length_is_refused(bad):
    with pytest.raises(ConfigError, match="iterations"):
        scaled_run_length(load_config("fcos_demo"), bad)


def test_train_command_and_notebooks_scale_alike(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        return tmp_path

    monkeypatch.setattr("msadkit.engine.train.trainer.train", fake_train)
    overrides = ["trainer.eval_period=50", f"distill.teacher={tmp_path}"]
    assert main(["train", "msad/msad_student_demo", *overrides, "--iterations", "40",
                 "--output-dir", str(tmp_path / "run")]) == 0
    from_command = seen["config"]
    from_notebook = notebook_config("msad/msad_student_demo", overrides, output_dir=tmp_path / "run", iterations=40,
                                    device="cpu")
    for section, keys in {"solver": ("max_iter", "steps", "warmup_iters"),
                          "trainer": ("eval_period", "checkpoint_period", "log_period")}.items():
        assert {k: from_command[section][k] for k in keys} == {k: from_notebook[section][k] for k in keys}
    assert from_command["distill"]["losses"] == from_notebook["distill"]["losses"]
    assert from_command["distill"]["losses"][0]["ramp_iters"] == 7
    assert from_command["schedule"] == from_notebook["schedule"] == "demo-40it"
