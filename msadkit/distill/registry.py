"""Registry of distillation loss terms, selected by ``type`` in ``distill.losses``.

Every term registers the same way, in :data:`TERMS` below (and :func:`register_term` adds one from
outside the package); ``build_distiller`` looks it up by the ``type`` of each entry of
``distill.losses``. A builder is called as
``builder(options, *, student, teacher)`` where ``options`` is the entry without its
``type`` key (``weight`` and any term-specific options), ``student`` the detector being trained,
and ``teacher`` the frozen teacher; it returns a
:class:`~msadkit.distill.distiller.DistillationLoss`.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from msadkit.distill.adl import build_adl_term
from msadkit.distill.distiller import DistillationLoss
from msadkit.distill.gid.term import build_gid_term
from msadkit.distill.msad import build_msad_feature
from msadkit.errors import ConfigError

__all__ = ["TERMS", "TermBuilder", "register_term", "build_term"]

TermBuilder = Callable[..., DistillationLoss]

TERMS: dict[str, TermBuilder] = {
    "msad_feature": build_msad_feature,
    "adl": build_adl_term,
    "gid": build_gid_term,
}


def register_term(name: str) -> Callable[[TermBuilder], TermBuilder]:
    """Decorator making ``builder(options, *, student, teacher)`` available as ``type: name``.

    Raises:
        ValueError: if ``name`` is already registered (two modules claiming one type is a bug).
    """

    def wrap(builder: TermBuilder) -> TermBuilder:
        if name in TERMS and TERMS[name] is not builder:
            raise ValueError(f"distillation term {name!r} is registered twice")
        TERMS[name] = builder
        return builder

    return wrap


def build_term(
    spec: dict[str, Any],
    *,
    student: nn.Module,
    teacher: nn.Module,
    where: str = "distill.losses",
) -> DistillationLoss:
    """Build one loss term from its config entry ``{"type": ..., "weight": ..., **options}``.

    Args:
        spec: the ``distill.losses`` entry.
        student: the detector being trained.
        teacher: the frozen teacher.
        where: the config location of ``spec``, used in error messages.

    Raises:
        ConfigError: ``spec`` is not a mapping, has no ``type`` or an unknown one.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where} entries must be mappings with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in TERMS:
        raise ConfigError(f"{where}: unknown distillation loss type {kind!r}; known types: {sorted(TERMS)}")
    options = {key: value for key, value in spec.items() if key != "type"}
    return TERMS[kind](options, student=student, teacher=teacher)
