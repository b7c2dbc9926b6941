"""What a compared method is: a set of registered distillation terms, and which teacher it learns from.

A method is written as the ``type`` names of its ``distill.losses`` terms joined by ``+``
(``gid``, ``gid+msad_feature``, ``fitnet+cwd``); on the cross-resolution track a ``@msad`` suffix
(``msad_feature@msad``) makes it learn from the MSAD teacher with the C-FF fusion and start from
that teacher's weights, as MSAD does; without it a cross-resolution method learns from the plain
high-resolution FCOS teacher with ``distill.cross_resolution: true``.

Every term of a method enters with its registered options (the values of the method's published
code, :mod:`msadkit.distill.registry`) and one weight per method: the official ``weight: 1.0``,
or the multiple of it that tuning on the tuning seed chose (:data:`WEIGHT_SCALES`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from msadkit.errors import ConfigError

__all__ = [
    "MSAD_SUFFIX",
    "WEIGHT_SCALES",
    "TERM_OPTIONS",
    "Method",
    "registered_terms",
    "parse_method",
    "parse_methods",
    "losses_override",
]

MSAD_SUFFIX = "@msad"
# The official weight first: tuning keeps it unless another candidate scores higher.
WEIGHT_SCALES: tuple[float, ...] = (1.0, 0.25, 4.0)
# Options that differ from a term's registered default at the comparison's size. MSAD's KD ramp is
# 500 iterations of the paper's 90k; the demo configs ramp over 50 of their 300 iterations, and the
# run-length rule (``--iterations``) scales it with the run. CrossKD's FCOS config cuts the student's
# head after tower conv 2 of 4, its middle; the comparison's heads have 2 tower convs, so after 1.
TERM_OPTIONS: dict[str, dict[str, Any]] = {
    "msad_feature": {"ramp_iters": 50},
    "crosskd": {"reused_teacher_head_idx": 1},
}


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        name: as written (``gid+msad_feature``, ``msad_feature@msad``); also its run folders' name.
        terms: the ``distill.losses`` types, in the order written.
        msad_teacher: learns from the MSAD (C-FF) teacher and starts from its weights.
    """

    name: str
    terms: tuple[str, ...]
    msad_teacher: bool = False

    def losses(self, scale: float = 1.0) -> list[dict[str, Any]]:
        """The ``distill.losses`` entries: each term with its options and ``weight = scale``."""
        return [{"type": term, "weight": float(scale), **TERM_OPTIONS.get(term, {})} for term in self.terms]


def registered_terms() -> tuple[str, ...]:
    """The ``type`` names of the registered distillation terms, sorted."""
    from msadkit.distill.registry import TERMS

    return tuple(sorted(TERMS))


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_method(text: str, *, track: str, argument: str = "--methods") -> Method:
    """The :class:`Method` that ``text`` names on ``track``.

    Raises:
        ConfigError: an empty or unknown term, a term named twice, or ``@msad`` off the
            cross-resolution track; the message names ``argument``.
    """
    name = str(text).strip()
    body, msad = (name[: -len(MSAD_SUFFIX)], True) if name.endswith(MSAD_SUFFIX) else (name, False)
    if "@" in body:
        raise ConfigError(f"{argument}: {name!r}: the only teacher suffix is {MSAD_SUFFIX} (the MSAD C-FF teacher)")
    if msad and track != "cross-resolution":
        raise ConfigError(
            f"{argument}: {name!r}: {MSAD_SUFFIX} (the MSAD C-FF teacher) exists on the cross-resolution track only, "
            f"not on {track}"
        )
    terms = tuple(part.strip() for part in body.split("+"))
    known = registered_terms()
    for term in terms:
        if not term:
            raise ConfigError(f"{argument}: {name!r} has an empty term; join terms with '+', e.g. gid+msad_feature")
        if term not in known:
            raise ConfigError(
                f"{argument}: unknown distillation term {term!r} in {name!r}{_suggest(term, known)}; "
                f"known terms: {', '.join(known)}"
            )
    repeated = sorted({term for term in terms if terms.count(term) > 1})
    if repeated:
        raise ConfigError(f"{argument}: {name!r} names {', '.join(repeated)} twice")
    return Method("+".join(terms) + (MSAD_SUFFIX if msad else ""), terms, msad)


def parse_methods(texts: Sequence[str], *, track: str, argument: str = "--methods") -> list[Method]:
    """Every method of ``texts`` (:func:`parse_method`), refusing an empty list and repeats."""
    if not texts:
        raise ConfigError(f"{argument}: name at least one method (registered terms: {', '.join(registered_terms())})")
    methods = [parse_method(text, track=track, argument=argument) for text in texts]
    names = [method.name for method in methods]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{argument}: {', '.join(repeated)} named twice")
    return methods


def losses_override(method: Method, scale: float = 1.0) -> str:
    """``distill.losses=[...]`` for a config override (JSON is YAML flow syntax)."""
    return "distill.losses=" + json.dumps(method.losses(scale))
