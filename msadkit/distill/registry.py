"""Registry of distillation loss terms, selected by ``type`` in ``distill.losses``.

Every term registers the same way, with :func:`register_term` (the built-in ones at the bottom of
this file, a term of your own from any module); ``build_distiller`` looks it up by the ``type`` of
each entry of ``distill.losses``. Registering also declares the term's options with their typed
defaults to the config loader (:func:`msadkit.config.sections.register_list_item`), so a config
naming an unknown or mistyped option is refused when it is loaded, before anything runs. A builder is called as
``builder(options, *, student, teacher)`` where ``options`` is the entry without its
``type`` key (``weight`` and any term-specific options), ``student`` the detector being trained,
and ``teacher`` the frozen teacher; it returns a
:class:`~msadkit.distill.distiller.DistillationLoss`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from msadkit.config.sections import register_list_item
from msadkit.distill import adl, crosskd, cwd, fgd, fitnet, mgd, msad, pkd
from msadkit.distill.adl import build_adl_term
from msadkit.distill.crosskd import build_crosskd_term
from msadkit.distill.cwd import build_cwd_term
from msadkit.distill.distiller import DistillationLoss
from msadkit.distill.fgd import build_fgd_term
from msadkit.distill.fitnet import build_fitnet_term
from msadkit.distill.gid import term as gid_term
from msadkit.distill.gid.term import build_gid_term
from msadkit.distill.mgd import build_mgd_term
from msadkit.distill.msad import build_msad_feature
from msadkit.distill.pkd import build_pkd_term
from msadkit.errors import ConfigError

__all__ = ["TERMS", "TermBuilder", "register_term", "build_term"]

TermBuilder = Callable[..., DistillationLoss]

TERMS: dict[str, TermBuilder] = {}


def register_term(
    name: str, *, options: Mapping[str, Any], loss_name: str | None = None
) -> Callable[[TermBuilder], TermBuilder]:
    """Decorator making ``builder(options, *, student, teacher)`` available as ``type: name``.

    Args:
        name: the ``type`` of its ``distill.losses`` entries.
        options: the term's own options with their defaults (the builder checks them with
            :func:`msadkit.distill.options.resolve_options`); ``weight`` and ``name`` are added.
        loss_name: default prefix of its loss keys (``loss_<name>``).

    Raises:
        ValueError: if ``name`` is already registered (two modules claiming one type is a bug).
    """

    def wrap(builder: TermBuilder) -> TermBuilder:
        if name in TERMS and TERMS[name] is not builder:
            raise ValueError(f"distillation term {name!r} is registered twice")
        register_list_item("distill.losses", name, {"weight": 1.0, "name": loss_name or f"loss_{name}", **options})
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


register_term("msad_feature", options=msad.OPTIONS, loss_name="loss_msad_feature")(build_msad_feature)
register_term("adl", options=adl.OPTIONS)(build_adl_term)
register_term("gid", options=gid_term.OPTIONS)(build_gid_term)
register_term("fitnet", options=fitnet.OPTIONS)(build_fitnet_term)
register_term("cwd", options=cwd.OPTIONS)(build_cwd_term)
register_term("pkd", options=pkd.OPTIONS)(build_pkd_term)
register_term("mgd", options=mgd.OPTIONS)(build_mgd_term)
register_term("fgd", options=fgd.OPTIONS)(build_fgd_term)
register_term("crosskd", options=crosskd.OPTIONS)(build_crosskd_term)
