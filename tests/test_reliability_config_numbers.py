"""Config numbers: every float spelling is a float for a float key, in files and overrides alike."""

import pytest

from msadkit.config import load_config
from msadkit.config.loader import parse_number
from msadkit.errors import ConfigError


@pytest.mark.parametrize(
    "text, value",
    [("1e-3", 0.001), ("1E4", 10000.0), ("5e-3", 0.005), (".5", 0.5), ("1_000.0", 1000.0), ("-2.5E+2", -250.0),
     ("3", 3), ("+7", 7), ("1.", 1.0), ("-.inf", float("-inf"))],
)
def test_parse_number_reads_every_decimal_spelling(text, value):
    parsed = parse_number(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["", "e3", "1e", "1__0", "_1", "0x10", "abc", "1.2.3", "1e-3x", "..inf"])
def test_parse_number_refuses_what_is_not_a_number(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("spelling, value", [("1e-3", 0.001), ("1E4", 1e4), ("5e-3", 0.005), (".5", 0.5), ("1_000.0", 1000.0), ("2", 2.0)])
def test_float_key_accepts_every_spelling_as_override(spelling, value):
    config = load_config("fcos_demo", [f"solver.base_lr={spelling}"])
    assert config["solver"]["base_lr"] == pytest.approx(value)
    assert type(config["solver"]["base_lr"]) is float


def test_float_key_accepts_scientific_notation_in_a_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("_base_: fcos_demo\nsolver:\n  base_lr: 5e-3\n  weight_decay: 1E-4\n  momentum: .9\n")
    config = load_config(path)
    assert config["solver"]["base_lr"] == pytest.approx(0.005)
    assert config["solver"]["weight_decay"] == pytest.approx(1e-4)
    assert config["solver"]["momentum"] == pytest.approx(0.9)


def test_float_list_accepts_scientific_notation():
    config = load_config("fcos_demo", ["model.pixel_std=[1e2, 5.7E1, 57]"])
    assert config["model"]["pixel_std"] == [100.0, 57.0, 57.0]


@pytest.mark.parametrize("spelling", ["1e4", "2.5", "1E4", "1_000.0"])
def test_int_key_rejects_floats(spelling):
    with pytest.raises(ConfigError, match="solver.max_iter.*must be of type int"):
        load_config("fcos_demo", [f"solver.max_iter={spelling}"])


def test_int_key_accepts_ints():
    assert load_config("fcos_demo", ["solver.max_iter=1_000"])["solver"]["max_iter"] == 1000


def test_string_key_that_looks_like_a_number_stays_a_string():
    assert load_config("fcos_demo", ["schedule=1e4"])["schedule"] == "1e4"


def test_a_number_is_still_refused_where_a_string_is_expected():
    with pytest.raises(ConfigError, match="model.arch.*must be of type str"):
        load_config("fcos_demo", ["model.arch=1.5"])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.pixel_std=[1, x, 3]", "model.pixel_std.*must be of type list of float"),
        ("data.train_short_sides=[64, 1.5]", "data.train_short_sides.*must be of type list of int"),
        ("solver.steps=oops", "solver.steps.*must be of type list of int"),
    ],
)
def test_a_wrong_list_names_the_element_type_it_needs(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("fcos_demo", [override])
