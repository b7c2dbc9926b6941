"""Level pairs of student and teacher maps, shared by the feature terms (FitNet, CWD, PKD, MGD).

The distiller hands a term ``student.levels[i]`` and ``teacher.levels[i]`` already paired: for a
plain teacher its own FPN level ``i``, for an MSAD teacher its fused map of the same size, and with
cross-resolution distillation whatever teacher level the distiller aligned with student level
``i``. A term never pairs levels itself and never assumes a stride; it only checks that each pair
can be compared element by element and refuses the batch otherwise.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from msadkit.distill.layout import levels_pair_up
from msadkit.errors import ConfigError, InputError

__all__ = ["check_level_counts", "paired_levels", "check_channels", "as_loss_dtype", "sum_over_adapted_pairs"]


def _teacher_level_names(teacher: nn.Module) -> tuple[str, ...] | None:
    # An MSAD teacher answers with its shared FCOS, whose in_features pair one to one with the
    # fused maps it hands over, so one attribute serves both kinds of teacher.
    detector = getattr(teacher, "dense_detector", None)
    names = getattr(detector, "in_features", None)
    return tuple(names) if names is not None else None


def _levels_cover_the_same_image(student: nn.Module, teacher: nn.Module) -> bool:
    teacher_low = getattr(teacher, "low_features", None)
    if teacher_low is not None:
        # An MSAD teacher's fused F3..F7 have the grid of a low-resolution student's p2..p6.
        return student.input_downsample == 2 and tuple(student.in_features) == tuple(teacher_low)
    return levels_pair_up(student, teacher)


def check_level_counts(student: nn.Module, teacher: nn.Module, *, term: str) -> int:
    """The number of levels the student distils, after checking that they can pair with the teacher's.

    Level ``i`` of the student pairs with level ``i`` of the teacher: at one resolution the same
    level, across resolutions (:func:`~msadkit.distill.layout.levels_pair_up`, an MSAD teacher's fused
    maps) the teacher's next one, which has the same size.

    Args:
        student: the detector being trained (its ``in_features`` are the distilled levels).
        teacher: the frozen teacher (a detector or an MSAD teacher).
        term: the ``distill.losses`` type, for the message.

    Raises:
        ConfigError: the student or the teacher has no FPN levels, their counts differ, or their
            levels do not cover the image alike (so the paired maps would differ in size).
    """
    student_levels = getattr(student, "in_features", None)
    if student_levels is None:
        raise ConfigError(
            f"distill.losses type {term!r}: the student ({type(student).__name__}) has no FPN levels (in_features)"
        )
    teacher_levels = _teacher_level_names(teacher)
    if teacher_levels is None:
        raise ConfigError(
            f"distill.losses type {term!r}: the teacher ({type(teacher).__name__}) has no FPN levels to distil from"
        )
    if len(student_levels) != len(teacher_levels):
        raise ConfigError(
            f"distill.losses type {term!r}: the student distils {len(student_levels)} levels "
            f"{tuple(student_levels)} but the teacher gives {len(teacher_levels)} {teacher_levels}; "
            "give both models the same number of FPN levels"
        )
    if not _levels_cover_the_same_image(student, teacher):
        raise ConfigError(
            f"distill.losses type {term!r}: the student's levels {tuple(student_levels)} (input_downsample="
            f"{student.input_downsample}) and the teacher's {teacher_levels} do not have the same sizes; use the "
            "same model.resolution, or a low-resolution student of a high-resolution teacher with "
            "distill.cross_resolution=true"
        )
    return len(student_levels)


def paired_levels(
    student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], *, term: str, what: str = "feature"
) -> list[tuple[Tensor, Tensor]]:
    """``(student, teacher)`` map pairs, the teacher detached, after checking that each pair lines up.

    Channels are not compared here: a term maps the student's channels first when it has adapters.

    Args:
        student_maps: ``L`` maps ``(N, Cs, Hi, Wi)``.
        teacher_maps: ``L`` maps ``(N, Ct, Hi, Wi)``.
        term: the term's name, for messages.
        what: ``"feature"`` or ``"logit"``, for messages.

    Raises:
        InputError: the counts differ, a map is not 4-D, or a pair differs in batch or spatial size.
    """
    if len(student_maps) != len(teacher_maps):
        raise InputError(
            f"distillation term {term!r}: the student gives {len(student_maps)} {what} maps and the teacher "
            f"{len(teacher_maps)}; the distiller must pair them one to one"
        )
    if not student_maps:
        raise InputError(f"distillation term {term!r}: no {what} maps to distil")
    pairs = []
    for level, (student, teacher) in enumerate(zip(student_maps, teacher_maps)):
        if student.dim() != 4 or teacher.dim() != 4:
            raise InputError(
                f"distillation term {term!r}: level {level}: {what} maps must be (N, C, H, W), got student "
                f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
            )
        if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
            raise InputError(
                f"distillation term {term!r}: level {level}: the student {what} map {tuple(student.shape)} and "
                f"the teacher's {tuple(teacher.shape)} differ in batch or spatial size; the pair cannot be "
                "compared location by location"
            )
        pairs.append((student, teacher.detach()))
    return pairs


def as_loss_dtype(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 when it is half or bfloat16 (autocast), else unchanged (float64 stays)."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor


def check_channels(student: Tensor, teacher: Tensor, *, term: str, level: int, adapted: bool) -> None:
    """Raise :class:`InputError` when a pair (after any adapter) differs in channels."""
    if student.shape[1] != teacher.shape[1]:
        hint = "the adapter's output" if adapted else "the student"
        raise InputError(
            f"distillation term {term!r}: level {level}: {hint} has {student.shape[1]} channels and the teacher "
            f"{teacher.shape[1]}"
        )


def sum_over_adapted_pairs(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    adapters: Sequence[nn.Module] | None,
    per_level: Callable[[int, Tensor, Tensor], Tensor],
    *,
    term: str,
    what: str = "feature",
) -> Tensor:
    """``sum_l per_level(l, A_l(S_l), T_l)`` over the paired maps (:func:`paired_levels`).

    Args:
        student_maps: ``L`` maps ``(N, Cs, Hi, Wi)``.
        teacher_maps: ``L`` maps ``(N, Ct, Hi, Wi)`` (detached here).
        adapters: at least ``L`` modules mapping ``Cs`` to ``Ct`` channels (the first ``L`` are
            used), or None to compare the student maps as they are.
        per_level: the term's loss of one pair ``(level, student (N, Ct, Hi, Wi), teacher)`` -> scalar.
        term / what: for messages.

    Raises:
        InputError: the maps cannot be paired or a pair differs in channels.
        ValueError: fewer adapters than levels (a programming error).
    """
    pairs = paired_levels(student_maps, teacher_maps, term=term, what=what)
    if adapters is not None and len(adapters) < len(pairs):
        raise ValueError(f"{term}: {len(adapters)} adapters for {len(pairs)} levels")
    total: Tensor | None = None
    for level, (student, teacher) in enumerate(pairs):
        if adapters is not None:
            student = adapters[level](student)
        check_channels(student, teacher, term=term, level=level, adapted=adapters is not None)
        value = per_level(level, student, teacher)
        total = value if total is None else total + value
    assert total is not None  # paired_levels refuses an empty list
    return total
