"""PKD, feature imitation with the Pearson correlation coefficient (Cao et al., "PKD: General
Distillation Framework for Object Detectors via Pearson Correlation Coefficient", NeurIPS 2022),
as the authors' code in mmrazor computes it (docs/methods.md, "PKD").

Each paired FPN map of student and teacher is standardised channel by channel over the batch and
the positions together (``M = N*H*W`` values per channel), then compared with a halved MSE:

    x^_{n,c,h,w} = (x_{n,c,h,w} - mean_c) / (std_c + eps),   std_c unbiased (divisor M - 1)
    L = loss_weight * sum_{l in levels} mean_{N,C,H,W} (s^_l - t^_l)^2 / 2

which, for ``eps -> 0``, equals ``(1 - 1/M) * mean_c (1 - r_c)`` with ``r_c`` the Pearson correlation
of channel ``c`` of student and teacher over the batch. Source: mmrazor main 90c7af1,
``mmrazor/models/losses/pkd_loss.py`` (``norm``: permute to ``(C, N*H*W)``, ``std`` unbiased,
``+ 1e-6``; ``F.mse_loss(...) / 2``). ``loss_weight = 10`` and the levels ``[0, 1, 2, 3]`` (the
RetinaNet configs override the four losses ``loss_pkd_fpn0..3`` of the Faster R-CNN base, so the
coarsest RetinaNet level P7 is not distilled) come from
``configs/distill/mmdet/pkd/pkd_fpn_retina_x101_retina_r50_2x_coco.py``.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.feature_pairs import as_loss_dtype, check_channels, check_level_counts, paired_levels
from msadkit.distill.layout import fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["standardize_channels", "pkd_map_loss", "PKDTerm", "build_pkd_term", "OPTIONS"]

# Options of a ``type: pkd`` entry and their defaults (mmrazor's RetinaNet config, see above).
OPTIONS: dict[str, Any] = {"loss_weight": 10.0, "levels": [0, 1, 2, 3], "eps": 1e-6}


def standardize_channels(feature: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Each channel of ``(N, C, H, W)`` shifted to mean 0 and divided by its unbiased std plus ``eps``,
    the statistics taken over ``N``, ``H`` and ``W`` together.

    Needs ``N*H*W >= 2`` (an unbiased std of one value is undefined).
    """
    n, c, h, w = feature.shape
    rows = feature.transpose(0, 1).reshape(c, n * h * w)
    centred = rows - rows.mean(dim=1, keepdim=True)
    variance = centred.square().sum(dim=1, keepdim=True) / (n * h * w - 1)
    # sqrt has an infinite derivative at 0: a constant channel (a dead ReLU, a constant teacher map)
    # would turn its zero gradient into NaN. The floor is far below eps, so values do not change.
    std = variance.clamp_min(1e-24).sqrt()
    return (centred / (std + eps)).reshape(c, n, h, w).transpose(0, 1)


def pkd_map_loss(student: Tensor, teacher: Tensor, *, eps: float = 1e-6) -> Tensor:
    """``mean((standardize(s) - standardize(t))^2) / 2`` of one pair of ``(N, C, H, W)`` maps.

    A pair with a single value per channel (``N*H*W == 1``, e.g. the 1x1 P7 of one small image)
    has no correlation to imitate and gives 0 (with a gradient path, so every parameter still
    receives a gradient).
    """
    n, _, h, w = student.shape
    student, teacher = as_loss_dtype(student), as_loss_dtype(teacher.detach())
    if n * h * w < 2:
        return student.sum() * 0.0
    difference = standardize_channels(student, eps=eps) - standardize_channels(teacher, eps=eps)
    return difference.square().mean() / 2


class PKDTerm(DistillationLoss):
    """PKD on the paired FPN levels listed in ``levels``.

    Args:
        name: key of the loss in the loss dict.
        weight: factor the distiller applies.
        loss_weight: factor of the sum over the levels.
        levels: indices of the distilled level pairs (0 = finest).
        eps: added to each channel's std.
        student_channels / teacher_channels: FPN widths; a 1x1 adapter per distilled level maps the
            student's to the teacher's when they differ (the standardisation only removes scale).
    """

    def __init__(
        self,
        *,
        name: str = "loss_pkd",
        weight: float = 1.0,
        loss_weight: float = 10.0,
        levels: Sequence[int] = (0, 1, 2, 3),
        eps: float = 1e-6,
        student_channels: int,
        teacher_channels: int,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not levels or len(set(levels)) != len(levels) or any(level < 0 for level in levels):
            raise ValueError(f"levels must be distinct level indices >= 0, got {list(levels)}")
        self.loss_weight = float(loss_weight)
        self.levels = tuple(int(level) for level in levels)
        self.eps = float(eps)
        # Adapters only for the distilled levels: DDP needs a gradient for every parameter.
        self.adapters = adapters_if_widths_differ(student_channels, teacher_channels, num_levels=len(self.levels))

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"": scalar}`` (the distiller applies ``weight``); ``student.levels`` and
        ``teacher.levels`` are ``L`` paired maps ``(N, C, Hi, Wi)``, of which ``levels`` are used."""
        del targets, iteration
        pairs = paired_levels(student.levels, teacher.levels, term=self.name)
        if max(self.levels) >= len(pairs):
            raise ConfigError(
                f"distillation term {self.name!r}: levels {list(self.levels)} but only {len(pairs)} level pairs"
            )
        total = None
        for index, level in enumerate(self.levels):
            student_map, teacher_map = pairs[level]
            if self.adapters is not None:
                student_map = self.adapters[index](student_map)
            check_channels(student_map, teacher_map, term=self.name, level=level, adapted=self.adapters is not None)
            per_level = pkd_map_loss(student_map, teacher_map, eps=self.eps)
            total = per_level if total is None else total + per_level
        return {"": self.loss_weight * total}

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, loss_weight={self.loss_weight}, eps={self.eps}, weight={self.weight}"


def build_pkd_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> PKDTerm:
    """``type: pkd`` with options ``weight`` (1.0), ``name`` (loss_pkd), ``loss_weight`` (10.0),
    ``levels`` ([0, 1, 2, 3]), ``eps`` (1e-6).

    Raises:
        ConfigError: an unknown option or value, a level index the student does not have, a model
            without FPN levels, or level counts that differ.
    """
    values = resolve_options(options, OPTIONS, term="pkd")
    where = "distill.losses type 'pkd'"
    num_levels = check_level_counts(student, teacher, term="pkd")
    levels = values["levels"]
    if (
        not levels
        or any(not isinstance(level, int) or isinstance(level, bool) for level in levels)
        or len(set(levels)) != len(levels)
        or not all(0 <= level < num_levels for level in levels)
    ):
        raise ConfigError(
            f"{where}: levels must be distinct integers in [0, {num_levels - 1}] (the student has "
            f"{num_levels} levels), got {levels!r}"
        )
    if values["loss_weight"] < 0 or values["eps"] < 0:
        raise ConfigError(
            f"{where}: loss_weight and eps must be >= 0, got loss_weight={values['loss_weight']}, eps={values['eps']}"
        )
    return PKDTerm(**values, **fpn_widths(student, teacher, term="pkd"))
