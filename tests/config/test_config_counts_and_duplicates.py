"""Counts, LR steps and duplicate YAML keys are refused when the config loads, one line each;
the packaged COCO recipes keep the papers' FCOS radius and test sizes."""

from __future__ import annotations

import pytest

from msadkit.config import load_config
from msadkit.config.defaults import DEFAULTS, FCOS_CENTER_SAMPLING_RADIUS
from msadkit.config.loader import list_packaged_configs
from msadkit.errors import ConfigError


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.max_iter=0", "solver.max_iter must be >= 1, got 0"),
        ("solver.max_iter=-5", "solver.max_iter must be >= 1, got -5"),
        ("solver.batch_size=0", "solver.batch_size must be >= 1, got 0"),
        ("solver.warmup_iters=-1", r"solver.warmup_iters must be >= 0 \(0 turns it off\), got -1"),
        ("trainer.log_period=0", "trainer.log_period must be >= 1, got 0"),
        ("trainer.eval_period=-10", "trainer.eval_period must be >= 0"),
        ("data.num_workers=-2", "data.num_workers must be >= 0"),
        ("data.train_short_sides=[]", "data.train_short_sides must be a non-empty list"),
        ("solver.steps=[5,3]", r"solver.steps must be iterations >= 1 in increasing order, got \[5, 3\]"),
        ("solver.steps=[0]", "solver.steps must be iterations >= 1"),
    ],
)
def test_impossible_counts_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("fcos_demo", [override])
    assert "\n" not in str(error.value)


def test_repeated_steps_and_steps_past_the_run_load():
    # A scaled schedule may round two steps onto one iteration; steps past max_iter mean no decay.
    assert load_config("fcos_demo", ["solver.max_iter=3", "solver.steps=[2, 2]"])["solver"]["steps"] == [2, 2]
    assert load_config("fcos_demo", ["solver.max_iter=100"])["solver"]["steps"] == [240, 280]
    assert load_config("fcos_demo", ["solver.max_iter=3", "solver.steps=[]"])["solver"]["steps"] == []


def test_a_key_twice_in_one_yaml_mapping_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("_base_: fcos_demo\nsolver:\n  max_iter: 10\nmodel:\n  num_classes: 3\nsolver:\n  batch_size: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"config {path}: key 'solver' appears twice in one mapping, at lines 2 and 6 (YAML would keep only the second)"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("solver:\n  max_iter: 10\n  base_lr: 0.1\n  max_iter: 20\n")
    with pytest.raises(ConfigError, match="key 'max_iter' appears twice in one mapping, at lines 2 and 4"):
        load_config(nested)


def test_the_same_key_in_a_file_and_its_base_is_an_override_not_a_duplicate(tmp_path):
    path = tmp_path / "child.yaml"
    path.write_text("_base_: fcos_demo\nsolver:\n  max_iter: 10\n  steps: [8]\n")
    assert load_config(path)["solver"]["max_iter"] == 10


def test_the_fcos_radius_is_defined_once_and_the_coco_recipes_keep_the_papers_sizes():
    import inspect

    from msadkit.modeling.detectors.fcos import FCOS
    from msadkit.modeling.detectors.fcos_targets import assign_fcos_targets

    assert FCOS_CENTER_SAMPLING_RADIUS == 1.5  # FCOS / MSAD code (docs/methods.md §1.5)
    assert DEFAULTS["model"]["fcos"]["center_sampling_radius"] == FCOS_CENTER_SAMPLING_RADIUS
    for function in (FCOS.__init__, assign_fcos_targets):
        assert inspect.signature(function).parameters["center_sampling_radius"].default == FCOS_CENTER_SAMPLING_RADIUS
    # Test sizes of the papers' tables: MSAD, GID and the peer methods' at 800 (max 1333), ADL at 600
    # (max 1000).
    expected = {"msad/": (800, 1333), "gid/": (800, 1333), "peers/": (800, 1333), "adl/": (600, 1000)}
    checked = 0
    for name in list_packaged_configs():
        config = load_config(name)
        if config["data"]["dataset"] != "coco":
            continue
        assert config["model"]["fcos"]["center_sampling_radius"] == 1.5, name
        (sizes,) = [value for prefix, value in expected.items() if name.startswith(prefix)]
        assert (config["data"]["test_short_side"], config["data"]["test_max_size"]) == sizes, name
        checked += 1
    assert checked >= 30


def test_an_option_key_yaml_reads_as_a_boolean_is_named_not_a_crash():
    # `on:` is `True` in YAML 1.1; a term's options are checked with the key spelled as YAML read it.
    import msadkit.distill.registry  # noqa: F401  (registers the terms' options)

    with pytest.raises(ConfigError, match=r"type 'cwd': unknown option\(s\) True"):
        load_config("fcos_demo", ["distill.losses=[{type: cwd, on: logits}]"])
