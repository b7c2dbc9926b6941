"""A term and a model registered from outside the package bring their own config keys.

The toy term and the toy architecture below live in this test module, not in msadkit: they
register the way a researcher's own code would, and the loader then checks their keys like any
built-in key (one line naming the key), and a run trains with them.
"""

from __future__ import annotations

import pytest

from msadkit.config import load_config
from msadkit.config.defaults import DEFAULTS
from msadkit.config.sections import LIST_ITEM_OPTIONS, NULLABLE_TYPES
from msadkit.distill.distiller import DistillationLoss
from msadkit.distill.options import resolve_options
from msadkit.distill.registry import TERMS, register_term
from msadkit.errors import ConfigError
from msadkit.modeling.builders import build_fcos
from msadkit.modeling.heads.tower import tower_blocks
from msadkit.modeling.registry import MODELS, register_model

TOY_TERM_OPTIONS = {"scale": 2.0, "levels": 2}


class ToyL2Term(DistillationLoss):
    """``scale * mean((S_l - T_l)^2)`` over the first ``levels`` level pairs (equal widths)."""

    def __init__(self, *, scale: float, levels: int, name: str, weight: float) -> None:
        super().__init__(name=name, weight=weight)
        self.scale, self.levels = scale, levels
        self.calls = 0

    def forward(self, student, teacher, targets, iteration):
        self.calls += 1
        pairs = list(zip(student.levels, teacher.levels))[: self.levels]
        return {"": self.scale * sum(((s - t) ** 2).mean() for s, t in pairs)}


BUILT_TERMS: list[ToyL2Term] = []


def build_toy_l2(options, *, student, teacher):
    term = ToyL2Term(**resolve_options(options, TOY_TERM_OPTIONS, term="toy_l2"))
    BUILT_TERMS.append(term)
    return term


def build_toy_fcos(config):
    """An FCOS whose head tower depth comes from the toy architecture's own section."""
    config = {**config, "model": {**config["model"], "fcos": {**config["model"]["fcos"]}}}
    config["model"]["fcos"]["num_convs"] = config["model"]["toy_fcos"]["tower_depth"]
    return build_fcos(config)


@pytest.fixture(autouse=True, scope="module")
def toy_registrations():
    """Register as a researcher's module would; undone afterwards, since the registries are global
    and a config dumped by a later test must not carry the toy section."""
    register_term("toy_l2", options=TOY_TERM_OPTIONS)(build_toy_l2)
    register_model("toy_fcos", build_toy_fcos, config_section={"tower_depth": 1, "note": None}, nullable={"note": str})
    yield
    TERMS.pop("toy_l2")
    LIST_ITEM_OPTIONS["distill.losses"].pop("toy_l2")
    MODELS.pop("toy_fcos")
    DEFAULTS["model"].pop("toy_fcos")
    NULLABLE_TYPES.pop("model.toy_fcos.note")


def test_registering_adds_the_term_and_the_model_with_their_keys():
    assert TERMS["toy_l2"] is build_toy_l2 and MODELS["toy_fcos"] is build_toy_fcos
    assert LIST_ITEM_OPTIONS["distill.losses"]["toy_l2"] == {"weight": 1.0, "name": "loss_toy_l2", **TOY_TERM_OPTIONS}
    assert DEFAULTS["model"]["toy_fcos"] == {"tower_depth": 1, "note": None}
    assert NULLABLE_TYPES["model.toy_fcos.note"] is str
    config = load_config(None, ["model.toy_fcos.tower_depth=3", "model.toy_fcos.note=wide"])
    assert config["model"]["toy_fcos"] == {"tower_depth": 3, "note": "wide"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.toy_fcos.depth=3", "unknown config key 'model.toy_fcos.depth'"),
        ("model.toy_fcos.tower_depth=deep", "config key 'model.toy_fcos.tower_depth' in override .* must be of type int"),
        ("model.toy_fcos.note=7", "config key 'model.toy_fcos.note' .* must be of type str \\(or null\\)"),
        ("distill.losses=[{type: toy_l2, scal: 3.0}]", "distill.losses\\[0\\] .* type 'toy_l2': unknown option\\(s\\) scal"),
        ("distill.losses=[{type: toy_l2, levels: many}]", "type 'toy_l2': option 'levels' must be a number, got 'many'"),
    ],
)
def test_the_loader_checks_registered_keys_before_anything_runs(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_registering_the_same_name_again_with_other_defaults_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("toy_fcos", lambda config: None)
    with pytest.raises(ValueError, match="registered twice"):
        register_term("toy_l2", options={"scale": 5.0})(lambda options, **_: None)


def test_every_key_defaulting_to_none_declares_its_type():
    def none_keys(section, prefix=""):
        for key, value in section.items():
            if isinstance(value, dict):
                yield from none_keys(value, f"{prefix}{key}.")
            elif value is None:
                yield f"{prefix}{key}"

    assert [key for key in none_keys(DEFAULTS) if key not in NULLABLE_TYPES] == []


def test_a_toy_model_and_toy_term_train_one_iteration(tmp_path, tiny_overrides):
    from msadkit.engine.train.metrics_logger import read_metrics
    from msadkit.engine.train.trainer import train
    from msadkit.modeling.registry import build_model
    from msadkit.utils.checkpoint import save_atomic

    teacher_config = load_config("fcos_demo", tiny_overrides(tmp_path / "teacher"))
    teacher = save_atomic(
        {"model": build_model(teacher_config).state_dict(), "config": teacher_config}, tmp_path / "teacher.pth"
    )
    run = tmp_path / "student"
    config = load_config(
        "fcos_demo",
        tiny_overrides(run, max_iter=1)
        + [
            "model.arch=toy_fcos",
            "model.toy_fcos.tower_depth=2",
            f"distill.teacher={teacher}",
            "distill.losses=[{type: toy_l2, scale: 3.0, levels: 2}]",
        ],
    )
    BUILT_TERMS.clear()
    assert train(config) == run
    (record,) = read_metrics(run / "metrics.jsonl")
    assert record["iter"] == 1 and record["loss_toy_l2"] > 0
    (term,) = BUILT_TERMS
    assert term.scale == 3.0 and term.levels == 2 and term.calls >= 1
    student = build_model(config)
    # The architecture's own key reached its builder: two tower convs where fcos.num_convs says one.
    assert config["model"]["fcos"]["num_convs"] == 1
    assert len(tower_blocks(student.head.cls_tower)) == 2
