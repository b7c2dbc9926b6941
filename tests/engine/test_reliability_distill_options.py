"""``distill.losses`` options accept every float spelling, as every other config value does."""

from __future__ import annotations

import pytest
import yaml

from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError


def test_yaml_scientific_notation_weight_is_a_number():
    entry = yaml.safe_load("weight: 1e-3\nbeta: 2.5E+1\nsteps: 1_000\n")
    assert entry["weight"] == "1e-3"  # YAML 1.1 reads it as a string
    resolved = resolve_options(entry, {"beta": 1.5, "steps": 10}, term="adl")
    assert resolved["weight"] == pytest.approx(1e-3) and isinstance(resolved["weight"], float)
    assert resolved["beta"] == 25.0
    assert resolved["steps"] == 1000 and isinstance(resolved["steps"], int)


def test_a_string_that_is_no_number_is_still_refused():
    with pytest.raises(ConfigError, match="option 'weight' must be a number, got 'heavy'"):
        resolve_options({"weight": "heavy"}, {}, term="adl")
    with pytest.raises(ConfigError, match="weight must be >= 0"):
        resolve_options({"weight": "-1e-3"}, {}, term="adl")


def test_string_options_stay_strings():
    assert resolve_options({"name": "1e-3"}, {}, term="adl")["name"] == "1e-3"
