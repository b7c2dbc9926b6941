"""The config loader, piece by piece: where a config is found, how a file chain and overrides merge
onto the defaults, which values each key type accepts, and the exact text of every error."""

from __future__ import annotations

import pytest
import yaml

from msadkit.config.defaults import default_config
from msadkit.config.loader import (
    PACKAGED_CONFIG_DIR,
    complete_config,
    dump_config,
    list_packaged_configs,
    load_config,
    merge_into_config,
    parse_override,
    resolve_config_path,
)
from msadkit.errors import ConfigError

# Where a config is found ---------------------------------------------------------------------------


def test_packaged_configs_are_listed_by_name_without_the_suffix():
    names = list_packaged_configs()
    assert "fcos_demo" in names and "msad/msad_teacher_demo" in names
    assert names == sorted(names)
    assert all(not name.endswith(".yaml") for name in names)


@pytest.mark.parametrize("name", ["fcos_demo", "fcos_demo.yaml"])
def test_a_packaged_name_resolves_with_or_without_the_suffix(name):
    assert resolve_config_path(name) == PACKAGED_CONFIG_DIR / "fcos_demo.yaml"


def test_a_file_wins_over_a_packaged_config_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fcos_demo.yaml").write_text("method: mine\n")
    assert resolve_config_path("fcos_demo.yaml").resolve() == (tmp_path / "fcos_demo.yaml").resolve()


def test_a_base_resolves_next_to_the_config_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    child = tmp_path / "configs" / "child.yaml"
    (tmp_path / "configs" / "parent.yaml").write_text("method: parent\n")
    monkeypatch.chdir(tmp_path)  # "parent.yaml" is not in the working directory
    assert resolve_config_path("parent.yaml", relative_to=child) == tmp_path / "configs" / "parent.yaml"


def test_a_missing_config_names_itself_and_lists_the_packaged_ones():
    with pytest.raises(ConfigError) as caught:
        resolve_config_path("no_such_config")
    message = str(caught.value)
    assert message.startswith("config no_such_config not found: it is neither a file nor a packaged config (packaged: ")
    assert message.endswith(f"{', '.join(list_packaged_configs())})")


# Reading one file ----------------------------------------------------------------------------------


def test_an_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == default_config()


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("solver: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^config {path} is not valid YAML: "):
        load_config(path)


def test_a_top_level_list_names_the_file_and_what_it_holds(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"config {path} must hold a mapping at the top level, got list"


# File chains ---------------------------------------------------------------------------------------


def test_a_chain_applies_the_base_first_and_the_child_last(tmp_path):
    (tmp_path / "grand.yaml").write_text("method: grand\nsolver:\n  base_lr: 0.1\n  max_iter: 10\n")
    (tmp_path / "parent.yaml").write_text("_base_: grand.yaml\nsolver:\n  base_lr: 0.2\n")
    (tmp_path / "child.yaml").write_text("_base_: parent.yaml\nmethod: child\n")
    config = load_config(tmp_path / "child.yaml")
    assert config["method"] == "child"
    assert config["solver"]["base_lr"] == 0.2
    assert config["solver"]["max_iter"] == 10
    assert config["solver"]["momentum"] == 0.9  # untouched defaults stay
    assert "_base_" not in config


@pytest.mark.parametrize(
    "files, message",
    [
        pytest.param(
            {"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"},
            "config {path} includes itself through _base_",
            id="a-chain-that-includes-itself",
        ),
        pytest.param(
            {"typo.yaml": "solver:\n  base_lrr: 0.1\n"},
            "unknown config key 'solver.base_lrr' in {path} (known keys at this level: {known_solver_keys})",
            id="an-unknown-key-names-the-key-the-file-and-the-known-keys",
        ),
        pytest.param(
            {"flat.yaml": "solver: 3\n"},
            "config key 'solver' in {path} must be a mapping, got 3",
            id="a-value-where-a-mapping-belongs",
        ),
    ],
)
def test_a_bad_config_file_is_refused_with_its_exact_message(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = tmp_path / next(iter(files))  # the first file is the one loaded
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    known_solver_keys = ", ".join(sorted(default_config()["solver"]))
    assert str(caught.value) == message.format(path=path, known_solver_keys=known_solver_keys)


# Overrides -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("solver.base_lr=0.5", ["solver", "base_lr"], 0.5),
        ("a.b.c=[1, 2]", ["a", "b", "c"], [1, 2]),
        (" method = x=y", ["method"], "x=y"),  # split at the first '=', key stripped
        ("model.backbone.weights=", ["model", "backbone", "weights"], None),
        ("model.backbone.weights=   ", ["model", "backbone", "weights"], None),
        ("trainer.progress_bar=false", ["trainer", "progress_bar"], False),
    ],
)
def test_an_override_splits_into_its_key_path_and_yaml_value(text, path, value):
    assert parse_override(text) == (path, value)


def test_an_override_without_an_equals_sign_shows_the_form():
    with pytest.raises(ConfigError) as caught:
        parse_override("solver.max_iter")
    assert str(caught.value) == "override 'solver.max_iter' must have the form key=value (for example solver.max_iter=300)"


def test_an_override_with_an_empty_key_is_refused():
    with pytest.raises(ConfigError) as caught:
        parse_override(" =3")
    assert str(caught.value) == "override ' =3' has an empty key"


def test_an_override_with_invalid_yaml_names_the_override():
    with pytest.raises(ConfigError, match=r"^override 'solver.steps=\[1, 2' has a value that is not valid YAML: "):
        parse_override("solver.steps=[1, 2")


def test_overrides_apply_after_the_file_and_nest_into_the_right_key():
    config = load_config("fcos_demo", ["model.fcos.nms_thresh=0.3", "trainer.seed=7"])
    assert config["model"]["fcos"]["nms_thresh"] == 0.3
    assert config["trainer"]["seed"] == 7
    assert config["model"]["fcos"]["num_convs"] == load_config("fcos_demo")["model"]["fcos"]["num_convs"]


def test_an_override_error_names_the_override_as_the_source():
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["solver.nope=1"])
    assert str(caught.value).startswith("unknown config key 'solver.nope' in override 'solver.nope=1' (known keys")


def test_no_name_gives_the_defaults_with_the_overrides():
    config = load_config(None, ["method=mine"])
    expected = default_config()
    expected["method"] = "mine"
    assert config == expected


# The schedule label of a run whose length changed ----------------------------------------------------


def test_a_changed_run_length_is_added_to_the_schedule_label(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("schedule: demo\nsolver:\n  max_iter: 300\n")
    assert load_config(path)["schedule"] == "demo"
    assert load_config(path, ["solver.max_iter=300"])["schedule"] == "demo"  # same length: no label
    assert load_config(path, ["solver.max_iter=30"])["schedule"] == "demo-30it"
    assert load_config(path, ["solver.max_iter=30", "schedule=mine"])["schedule"] == "mine"
    assert load_config(path, ["schedule=mine", "solver.max_iter=30"])["schedule"] == "mine"
    assert load_config(path, ["solver.max_iter=30", "solver.base_lr=0.5"])["schedule"] == "demo-30it"


# Value types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key, value",
    [
        ("solver.base_lr=1", ("solver", "base_lr"), 1.0),  # an int for a float key becomes a float
        ("model.pixel_std=[1, 2, 3]", ("model", "pixel_std"), [1.0, 2.0, 3.0]),
        ("model.pixel_std=[1e2, '2', 3.5]", ("model", "pixel_std"), [100.0, 2.0, 3.5]),
        ("solver.steps=[10, 20]", ("solver", "steps"), [10, 20]),
        ("solver.steps=[]", ("solver", "steps"), []),
        ("model.backbone.weights=/x/y.pth", ("model", "backbone", "weights"), "/x/y.pth"),  # None default: its declared type
        ("model.backbone.weights=null", ("model", "backbone", "weights"), None),  # ... or not set
        ("model.fcos.tower_conv_bias=true", ("model", "fcos", "tower_conv_bias"), True),
        ("trainer.loggers=[csv, mlflow]", ("trainer", "loggers"), ["csv", "mlflow"]),  # a list of strings
        ("trainer.progress_bar=false", ("trainer", "progress_bar"), False),
        ("method=123abc", ("method",), "123abc"),
    ],
)
def test_each_key_type_accepts_its_values(override, key, value):
    config = load_config(None, [override])
    for part in key:
        config = config[part]
    assert config == value and type(config) is type(value)
    if isinstance(value, list):
        assert [type(item) for item in config] == [type(item) for item in value]


@pytest.mark.parametrize(
    "override, type_name",
    [
        ("solver.max_iter=true", "int"),  # a bool is not an int
        ("model.backbone.width=null", "float"),  # "not set" only where the default is "not set"
        ("model.backbone.weights=3", "str (or null)"),  # a None default has a declared type
        ("model.fcos.tower_conv_bias=1", "bool (or null)"),
        ("distill.teacher=[a, b]", "str (or null)"),
        ("solver.max_iter=2.0", "int"),
        ("solver.base_lr=true", "float"),  # nor a float
        ("solver.base_lr=fast", "float"),
        ("trainer.progress_bar=1", "bool"),
        ("solver.steps=5", "list of int"),
        ("solver.steps=[1.5]", "list of int"),
        ("solver.steps=[true]", "list of int"),
        ("model.pixel_std=[a, b, c]", "list of float"),
        ("model.pixel_std=[true]", "list of float"),
        ("model.pixel_std=3.0", "list of float"),
        ("trainer.loggers=csv", "list"),
        ("method=3", "str"),
        ("method=[a]", "str"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_the_type_and_the_value(override, type_name):
    key, raw = override.split("=", 1)
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert str(caught.value) == (
        f"config key '{key}' in override '{override}' must be of type {type_name}, got {yaml.safe_load(raw)!r}"
    )


def test_entries_of_unregistered_term_types_are_copied_unchecked_and_not_shared():
    # Registered types are checked (tests/config/test_registries_extend_the_config.py); an entry
    # of a type no module registered (yet) is left to the term registry when the run is built.
    losses = [{"type": "not_registered_anywhere", "anything": 1}]
    config = merge_into_config(default_config(), {"distill": {"losses": losses}}, "test")
    assert config["distill"]["losses"] == losses
    losses[0]["anything"] = 2
    assert config["distill"]["losses"][0]["anything"] == 1


def test_merged_values_are_copies():
    steps = [10, 20]
    config = merge_into_config(default_config(), {"solver": {"steps": steps}}, "test")
    steps.append(30)
    assert config["solver"]["steps"] == [10, 20]


def test_merge_into_config_changes_only_the_keys_given_and_names_its_source():
    config = default_config()
    result = merge_into_config(config, {"model": {"msad": {"eval_branch": "high"}}}, "the notebook")
    assert result is config
    assert config["model"]["msad"] == {**default_config()["model"]["msad"], "eval_branch": "high"}
    with pytest.raises(ConfigError, match=r"^unknown config key 'model\.msad\.nope' in the notebook "):
        merge_into_config(config, {"model": {"msad": {"nope": 1}}}, "the notebook")


# Saved configs -------------------------------------------------------------------------------------


def test_a_saved_config_is_completed_with_todays_defaults_without_checks():
    saved = {"method": "old", "solver": {"max_iter": 5, "retired_key": 1}, "extra": {"a": {"b": 1}}}
    completed = complete_config(saved)
    assert completed["method"] == "old"
    assert completed["solver"]["max_iter"] == 5
    assert completed["solver"]["retired_key"] == 1  # kept, not refused
    assert completed["solver"]["base_lr"] == default_config()["solver"]["base_lr"]  # filled in
    assert completed["extra"] == {"a": {"b": 1}}
    saved["extra"]["a"]["b"] = 2
    assert completed["extra"] == {"a": {"b": 1}}  # a copy


def test_a_saved_config_merges_nested_mappings_key_by_key():
    completed = complete_config({"model": {"fcos": {"nms_thresh": 0.3}}})
    assert completed["model"]["fcos"]["nms_thresh"] == 0.3
    assert completed["model"]["fcos"]["num_convs"] == default_config()["model"]["fcos"]["num_convs"]


def test_a_config_dumps_to_yaml_in_definition_order_and_reads_back():
    config = load_config("fcos_demo")
    text = dump_config(config)
    assert yaml.safe_load(text) == config
    assert [line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "-"))] == list(config)


def test_a_missing_config_says_none_when_nothing_is_packaged(tmp_path, monkeypatch):
    from msadkit.config import loader

    monkeypatch.setattr(loader, "PACKAGED_CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError) as caught:
        resolve_config_path("fcos_demo")
    assert str(caught.value) == "config fcos_demo not found: it is neither a file nor a packaged config (packaged: none)"


def test_keys_after_a_free_form_key_in_the_same_mapping_still_merge(tmp_path):
    path = tmp_path / "student.yaml"
    path.write_text("distill:\n  losses: [{type: msad_feature}]\n  teacher: runs/teacher\n  init_student_from_teacher: true\n")
    config = load_config(path)
    assert config["distill"]["losses"] == [{"type": "msad_feature"}]
    assert config["distill"]["teacher"] == "runs/teacher"
    assert config["distill"]["init_student_from_teacher"] is True


def test_nested_values_of_a_free_form_key_are_deep_copies():
    # distill.losses holds mappings with lists inside; the config must not share them.
    losses = [{"type": "unregistered_term", "levels": ["p3"]}]
    config = merge_into_config(default_config(), {"distill": {"losses": losses}}, "test")
    losses[0]["levels"].append("p4")
    assert config["distill"]["losses"] == [{"type": "unregistered_term", "levels": ["p3"]}]
