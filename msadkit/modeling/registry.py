"""The model registry: ``model.arch`` names and the builders behind them.

Every architecture registers the same way, with :func:`register_model` (the built-in ones below,
an architecture of your own from any module); a builder is called as ``builder(config) -> nn.Module``
with the whole resolved config. An architecture may bring its own config section
(``model.<arch>``, typed defaults) which the loader then checks like every other key. The registry knows nothing about
distillation: a student is a plain detector here, and the engine wraps it in a ``Distiller`` when
``distill.teacher`` is set.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from msadkit.config.sections import register_section
from msadkit.errors import ConfigError
from msadkit.modeling.builders import build_fcos, build_msad_teacher, build_retinanet

__all__ = ["MODELS", "ModelBuilder", "register_model", "build_model"]

ModelBuilder = Callable[[dict[str, Any]], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "fcos": build_fcos,
    "retinanet": build_retinanet,
    "msad_teacher": build_msad_teacher,
}


def register_model(
    name: str,
    builder: ModelBuilder,
    *,
    config_section: Mapping[str, Any] | None = None,
    nullable: Mapping[str, type | tuple[type, ...]] | None = None,
) -> ModelBuilder:
    """Make ``builder(config) -> nn.Module`` available as ``model.arch: name``.

    Args:
        name: the ``model.arch`` value.
        builder: called with the whole resolved config.
        config_section: the architecture's own keys and defaults, added as ``model.<name>``.
        nullable: types of the section's keys whose default is None.

    Raises:
        ValueError: ``name`` is already taken by another builder, or its section clashes.
    """
    if name in MODELS and MODELS[name] is not builder:
        raise ValueError(f"model architecture {name!r} is registered twice")
    if config_section is not None:
        register_section(f"model.{name}", config_section, nullable=nullable)
    MODELS[name] = builder
    return builder


def build_model(config: dict[str, Any]) -> nn.Module:
    """The detector named by ``model.arch`` (a distillation student is built as a plain detector).

    Raises:
        ConfigError: an unknown ``model.arch`` (the known names are listed).
    """
    arch = config["model"]["arch"]
    if arch not in MODELS:
        raise ConfigError(f"model.arch must be one of {tuple(sorted(MODELS))}, got {arch!r}")
    return MODELS[arch](config)
