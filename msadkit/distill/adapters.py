"""Per-level feature adapters: trainable convs mapping a student's FPN width to its teacher's.

MSAD (1x1) and GID (1x1 or 3x3) both build them here. They are trained with the student, saved in
the distiller's training checkpoints and left out of the deployed student.
"""

from __future__ import annotations

from torch import nn

__all__ = ["make_feature_adapters", "adapters_if_widths_differ"]


def make_feature_adapters(
    student_channels: int, teacher_channels: int, *, num_levels: int = 5, kernel_size: int = 1
) -> nn.ModuleList:
    """One ``Conv2d(student_channels, teacher_channels, kernel_size)`` per level, size-preserving.

    Returns:
        ``nn.ModuleList`` of ``num_levels`` convs mapping ``(N, Cs, H, W)`` to ``(N, Ct, H, W)``.

    Raises:
        ValueError: a channel count or ``num_levels`` below 1, or an even ``kernel_size``.
    """
    if student_channels < 1 or teacher_channels < 1:
        raise ValueError(
            f"channel counts must be >= 1, got student_channels={student_channels}, "
            f"teacher_channels={teacher_channels}"
        )
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    return nn.ModuleList(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=kernel_size, padding=kernel_size // 2)
        for _ in range(num_levels)
    )


def adapters_if_widths_differ(
    student_channels: int, teacher_channels: int, *, num_levels: int = 5, kernel_size: int = 1
) -> nn.ModuleList | None:
    """:func:`make_feature_adapters` when the student's FPN width differs from the teacher's, else None.

    Maps of equal widths are compared as they are, so a term adds parameters to train only where it
    has channels to map (FitNet alone adapts equal widths too, by its own option).

    Returns:
        ``num_levels`` convs mapping ``(N, Cs, H, W)`` to ``(N, Ct, H, W)``, or None when ``Cs == Ct``.
    """
    if student_channels == teacher_channels:
        return None
    return make_feature_adapters(student_channels, teacher_channels, num_levels=num_levels, kernel_size=kernel_size)
