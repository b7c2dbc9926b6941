"""Checking the options of one ``distill.losses`` entry against the term's defaults."""

from __future__ import annotations

from typing import Any

from msadkit.config.loader import parse_number
from msadkit.config.sections import type_name, value_fits
from msadkit.errors import ConfigError

__all__ = ["resolve_options"]


def resolve_options(
    options: dict[str, Any], defaults: dict[str, Any], *, term: str, name: str | None = None
) -> dict[str, Any]:
    """``defaults`` updated with ``options``; unknown keys and wrong types raise :class:`ConfigError`.

    Every term accepts ``weight`` (factor of all its losses, default 1.0) and ``name`` (prefix of
    its loss keys, default ``name`` or ``"loss_<term>"``) on top of ``defaults``.

    Args:
        options: the ``distill.losses`` entry without its ``type``.
        defaults: the term-specific options and their default values.
        term: the term type, for messages.
        name: default prefix of the term's loss keys.
    """
    known = {"weight": 1.0, "name": name or f"loss_{term}", **defaults}
    unknown = sorted(str(key) for key in set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"distill.losses entry of type {term!r}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    resolved = dict(known)
    for key, value in options.items():
        default = known[key]
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            # YAML 1.1 reads `weight: 1e-3` as a string: one number parser for every config value.
            number = parse_number(value)
            value = value if number is None else number
        if not value_fits(default, value):
            raise ConfigError(
                f"distill.losses entry of type {term!r}: option {key!r} must be {type_name(known[key])}, "
                f"got {value!r}"
            )
        resolved[key] = value
    if resolved["weight"] < 0:
        raise ConfigError(f"distill.losses entry of type {term!r}: weight must be >= 0, got {resolved['weight']}")
    return resolved
