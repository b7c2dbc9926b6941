"""The keys two recorded configs differ in, and the notebook job's command line."""

from __future__ import annotations

import json
import math

import pytest

from msadkit.commands.notebook import parse_value
from msadkit.errors import ConfigError
from msadkit.jobs import JobConfigMismatchError, command_job, config_differences, decide_reuse, notebook_job


def test_differences_are_dotted_paths_in_the_requested_order():
    recorded = {"solver": {"base_lr": 0.03, "steps": [8, 9]}, "losses": [{"type": "adl", "weight": 1.0}], "old": 1}
    requested = {"losses": [{"type": "adl", "weight": 3.0}], "solver": {"base_lr": 0.03, "steps": [8, 9, 10]}, "new": 2}
    assert config_differences(recorded, requested) == ["losses[0].weight", "solver.steps", "new", "old"]


@pytest.mark.parametrize(
    ("recorded", "requested", "differ"),
    [
        (1, 1.0, False),  # a YAML int and float of the same value are one setting
        (True, 1, True),  # a switch is not a number
        (math.nan, math.nan, False),
        (None, 0, True),
        ("0.5", 0.5, True),
        ([1, [2, 3]], [1, [2, 3]], False),
        ({"a": {"b": 1}}, {"a": 1}, True),
    ],
)
def test_values_compare_as_settings(recorded, requested, differ):
    assert bool(config_differences({"key": recorded}, {"key": requested})) is differ


def test_where_a_run_lives_is_not_part_of_what_it_computes():
    assert config_differences({"output_dir": "/old", "seed": 1}, {"output_dir": "/new", "seed": 1}) == []
    moved = ({"notebook": "toy", "parameters": {"output_dir": "/old", "value": 1}},
             {"notebook": "toy", "parameters": {"output_dir": "/new", "value": 1}})
    assert config_differences(*moved) == []


def test_notebook_job_passes_each_parameter_so_the_command_line_reads_it_back(tmp_path):
    parameters = {"width": 0.25, "lr": 1e-05, "losses": [{"type": "gid", "weight": 1e-05}], "name": "msad/x",
                  "on": True, "off": None, "text_true": "true", "iterations": 3}
    job = notebook_job("toy", tmp_path / "toy.ipynb", tmp_path / "run", parameters, kernel_name="k",
                       execution_timeout=60.0, force=True)
    command = list(job.command)
    assert command[3:7] == ["notebook", "run", str(tmp_path / "toy.ipynb"), "--out"]
    passed = {command[i + 1]: parse_value(command[i + 2]) for i, item in enumerate(command) if item == "-p"}
    assert passed == parameters
    assert command[-5:] == ["--force", "--kernel", "k", "--timeout", "60.0"] and job.rerun_finished
    assert job.config == {"notebook": "toy", "parameters": {**parameters, "output_dir": str(tmp_path / "run")}}
    assert [str(path) for path in job.output_paths()] == [str(tmp_path / "run" / "results.json")]


@pytest.mark.parametrize("value", ["1e3", "None", "nan"])
def test_a_text_the_command_line_would_read_as_another_value_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match=rf"notebook parameter tag={value!r} cannot be passed"):
        notebook_job("toy", "01", tmp_path, {"tag": value})


def test_a_refusal_shows_a_key_one_side_lacks_and_counts_the_rest(tmp_path):
    recorded = {"a": 1, "b": 1, "c": 1, "d": 1}
    (tmp_path / "job.json").write_text(json.dumps({"status": "finished", "config": recorded}))
    job = command_job("run", ["true"], tmp_path, config={"seed": 2, "a": 2, "b": 2, "c": 1, "d": 2})
    with pytest.raises(JobConfigMismatchError) as refused:
        decide_reuse(job)
    assert "seed is absent there, 2 requested; a is 1 there, 2 requested; b is 1 there" in str(refused.value)
    assert "(and 1 more)" in str(refused.value) and refused.value.keys == ["seed", "a", "b", "d"]
