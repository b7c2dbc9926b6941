"""Distillation loss terms; importing this package registers every term module in it.

Each module of the package registers its builders with
:func:`msadkit.modeling.distillation.terms.registry.register_term`; they are imported here so that
a new term needs no edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil

from msadkit.modeling.distillation.terms.registry import TERMS, build_term, register_term

__all__ = ["TERMS", "build_term", "register_term"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")
