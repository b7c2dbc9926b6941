"""FGD: focal and global distillation (Yang et al., CVPR 2022, arXiv 2111.11837) on FPN levels.

Re-implemented from the official ``yzd-v/FGD`` at c03a6cf (``mmdet/distillation/losses/fgd.py``).
On every level ``l`` (student map through a 1x1 adapter when the widths differ, ``S`` the student
and ``T`` the teacher map, ``(N, C, H, W)``)::

    A_sp(F) = H * W * softmax_hw(mean_c |F| / temp)          spatial attention (N, H, W)
    A_ch(F) = C * softmax_c(mean_hw |F| / temp)              channel attention (N, C)
    fg      = sum fg_mask * A_sp(T) * A_ch(T) * (S - T)^2 / N
    bg      = sum bg_mask * A_sp(T) * A_ch(T) * (S - T)^2 / N
    att     = (sum |A_ch(S) - A_ch(T)| + sum |A_sp(S) - A_sp(T)|) / N
    global  = sum (R_s(S) - R_t(T))^2 / N
    R(F)    = F + W2(ReLU(LN(W1(sum_hw softmax_hw(Wk F) * F))))  a GcBlock (context + channel add)

with the masks of :mod:`msadkit.distill.fgd_masks`. The term returns ``alpha_fgd * fg``,
``beta_fgd * bg``, ``gamma_fgd * att`` and ``lambda_fgd * global`` summed over levels. The
GcBlocks ``R_s`` and ``R_t`` are trained with the student (the teacher's features carry no
gradient, its GcBlock does); like the adapters they live in the distiller's checkpoints only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.fgd_masks import MASK_EXTENTS, fgd_masks
from msadkit.distill.layout import fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["GlobalContextBlock", "fgd_attention", "fgd_level_losses", "FGDLoss", "build_fgd_term", "OPTIONS"]

# "padded": boxes map onto a level by the size of the padded batch the level covers. "valid": by
# each image's own size, as the official code does (img_shape, the size before padding).
BOX_REFERENCES = ("padded", "valid")


class GlobalContextBlock(nn.Module):
    """GcBlock ``R(F) = F + W2(ReLU(LN(W1(context(F)))))`` with attention pooling as context.

    The official initialisation: ``Wk`` Kaiming-normal (fan in) with zero bias, the last conv
    ``W2`` all zero, so ``R`` starts as the identity.

    Args:
        channels: ``C`` of the maps (at least 2: the bottleneck has ``C // 2`` channels).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"GlobalContextBlock needs at least 2 channels, got {channels}")
        self.context_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``: ``x`` plus one ``(N, C, 1, 1)`` vector per image."""
        n, c, h, w = x.shape
        weights = self.context_mask(x).reshape(n, 1, h * w).softmax(dim=-1)  # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, h * w), weights.transpose(1, 2)).reshape(n, c, 1, 1)
        return x + self.channel_add(context)


def fgd_attention(feature: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Spatial ``(N, H, W)`` and channel ``(N, C)`` attention of a ``(N, C, H, W)`` map.

    ``H * W * softmax(mean_c |F| / temp)`` over the locations and ``C * softmax(mean_hw |F| / temp)``
    over the channels: each averages 1, so a uniform map weighs every location and channel 1.
    """
    n, c, h, w = feature.shape
    magnitude = feature.abs()
    spatial = (magnitude.mean(dim=1).reshape(n, h * w) / temperature).softmax(dim=1).reshape(n, h, w) * (h * w)
    channel = (magnitude.mean(dim=(2, 3)) / temperature).softmax(dim=1) * c
    return spatial, channel


def fgd_level_losses(
    student: Tensor,
    teacher: Tensor,
    fg_mask: Tensor,
    bg_mask: Tensor,
    *,
    temperature: float,
    student_context: nn.Module,
    teacher_context: nn.Module,
) -> dict[str, Tensor]:
    """The four unweighted FGD losses of one level, each summed and divided by the batch size.

    Args:
        student: ``(N, C, H, W)`` student map, already at the teacher's width.
        teacher: ``(N, C, H, W)`` teacher map (a fixed target: detached here).
        fg_mask, bg_mask: ``(N, H, W)`` from :func:`~msadkit.distill.fgd_masks.fgd_masks`.
        temperature: of both attentions.
        student_context, teacher_context: the GcBlocks ``R_s`` and ``R_t`` (may be one module).

    Returns:
        ``{"fg", "bg", "attention", "global"}`` scalars.
    """
    teacher = teacher.detach()
    batch = student.shape[0]
    spatial_t, channel_t = fgd_attention(teacher, temperature)
    spatial_s, channel_s = fgd_attention(student, temperature)
    # Both feature losses weigh the squared error by the teacher's attention: the student learns
    # the locations and channels the teacher relies on.
    weighted = (student - teacher).square() * spatial_t[:, None] * channel_t[:, :, None, None]
    fg = (weighted * fg_mask[:, None]).sum() / batch
    bg = (weighted * bg_mask[:, None]).sum() / batch
    attention = ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / batch
    relation = (student_context(student) - teacher_context(teacher)).square().sum() / batch
    return {"fg": fg, "bg": bg, "attention": attention, "global": relation}


# Options of a ``type: fgd`` entry and their defaults: the official RetinaNet R50 student configs
# (yzd-v/FGD c03a6cf, configs/distillers/fgd/fgd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py
# and fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco.py, lines 7-11); the other keys select
# the official code's forms (docs/deviations.md).
OPTIONS: dict[str, Any] = {
    "temp": 0.5,
    "alpha_fgd": 0.001,
    "beta_fgd": 0.0005,
    "gamma_fgd": 0.0005,
    "lambda_fgd": 0.000005,
    "mask_extent": "inclusive",
    "box_reference": "padded",
    "separate_gcblocks": True,
}


class FGDLoss(DistillationLoss):
    """FGD on every paired level: ``{"fg", "bg", "attention", "global"}``, each times its weight.

    Args:
        name: prefix of the returned keys.
        weight: factor applied by the distiller on top of the FGD weights.
        student_channels, teacher_channels: FPN widths; a trainable 1x1 adapter per level maps the
            student's to the teacher's when they differ.
        num_levels: number of distilled levels (adapters and GcBlocks per level, as the official
            code builds one loss module per level).
        temp, alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd: see the module docstring.
        mask_extent: one of :data:`~msadkit.distill.fgd_masks.MASK_EXTENTS`.
        box_reference: ``"padded"`` or ``"valid"`` (see :data:`BOX_REFERENCES`).
        separate_gcblocks: one GcBlock for the student and one for the teacher per level (the
            official code); False shares one, the single ``R`` of the paper's equation.
    """

    def __init__(
        self,
        *,
        name: str = "loss_fgd",
        weight: float = 1.0,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
        temp: float = OPTIONS["temp"],
        alpha_fgd: float = OPTIONS["alpha_fgd"],
        beta_fgd: float = OPTIONS["beta_fgd"],
        gamma_fgd: float = OPTIONS["gamma_fgd"],
        lambda_fgd: float = OPTIONS["lambda_fgd"],
        mask_extent: str = "inclusive",
        box_reference: str = "padded",
        separate_gcblocks: bool = True,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if not (math.isfinite(temp) and temp > 0):
            raise ValueError(f"temp must be > 0, got {temp}")
        weights = {"alpha_fgd": alpha_fgd, "beta_fgd": beta_fgd, "gamma_fgd": gamma_fgd, "lambda_fgd": lambda_fgd}
        for key, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value}")
        if mask_extent not in MASK_EXTENTS:
            raise ValueError(f"mask_extent must be one of {MASK_EXTENTS}, got {mask_extent!r}")
        if box_reference not in BOX_REFERENCES:
            raise ValueError(f"box_reference must be one of {BOX_REFERENCES}, got {box_reference!r}")
        if teacher_channels < 2:
            raise ValueError(f"the teacher's maps need at least 2 channels for the GcBlock, got {teacher_channels}")
        self.temp = float(temp)
        self.alpha_fgd, self.beta_fgd = float(alpha_fgd), float(beta_fgd)
        self.gamma_fgd, self.lambda_fgd = float(gamma_fgd), float(lambda_fgd)
        self.mask_extent = mask_extent
        self.box_reference = box_reference
        self.num_levels = int(num_levels)
        self.adapters = adapters_if_widths_differ(student_channels, teacher_channels, num_levels=num_levels)
        self.student_context = nn.ModuleList(GlobalContextBlock(teacher_channels) for _ in range(num_levels))
        self.teacher_context: nn.ModuleList | None = None
        if separate_gcblocks:
            self.teacher_context = nn.ModuleList(GlobalContextBlock(teacher_channels) for _ in range(num_levels))

    def _image_sizes(self, student: StudentOutputs, batch: int) -> list[tuple[float, float]]:
        if self.box_reference == "valid" and student.image_sizes is not None:
            return [tuple(float(side) for side in size) for size in student.image_sizes]
        return [tuple(float(side) for side in student.image_shape)] * batch

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"fg", "bg", "attention", "global"}`` summed over levels, each times its FGD weight.

        Args:
            student: ``levels`` ``L`` maps ``(N, Cs, Hi, Wi)``; ``image_shape`` the padded batch
                the boxes are given in.
            teacher: ``levels`` ``L`` maps ``(N, Ct, Hi, Wi)`` paired with the student's.
            targets: per image ``{"boxes": (M, 4)}`` in pixels of ``student.image_shape``.
            iteration: unused.
        """
        del iteration
        if len(student.levels) != len(teacher.levels) or len(student.levels) != self.num_levels:
            raise InputError(
                f"distillation term {self.name!r}: the student gives {len(student.levels)} levels, the teacher "
                f"{len(teacher.levels)}, the term was built for {self.num_levels}"
            )
        batch = student.levels[0].shape[0]
        if len(targets) != batch:
            raise InputError(f"distillation term {self.name!r}: {len(targets)} targets for {batch} images")
        image_sizes = self._image_sizes(student, batch)
        device = student.levels[0].device
        dtype = torch.promote_types(student.levels[0].dtype, torch.float32)
        boxes = [target["boxes"].to(device=device, dtype=dtype).reshape(-1, 4) for target in targets]
        totals = {key: torch.zeros((), device=device, dtype=dtype) for key in ("fg", "bg", "attention", "global")}
        # In float32 even under autocast: softmax over a whole map and sums of squares lose too
        # much in half precision.
        with torch.autocast(device_type=device.type, enabled=False):
            for level, (s, t) in enumerate(zip(student.levels, teacher.levels)):
                s = s.to(dtype)
                if self.adapters is not None:
                    s = self.adapters[level](s)
                t = t.detach().to(dtype)
                if s.shape != t.shape:
                    raise InputError(
                        f"distillation term {self.name!r}: level {level} of the student is {tuple(s.shape)} "
                        f"(after its adapter) and of the teacher {tuple(t.shape)}; they must be paired maps"
                    )
                fg, bg = fgd_masks(boxes, tuple(s.shape[-2:]), image_sizes, extent=self.mask_extent, dtype=dtype)
                teacher_context = self.teacher_context if self.teacher_context is not None else self.student_context
                losses = fgd_level_losses(
                    s,
                    t,
                    fg,
                    bg,
                    temperature=self.temp,
                    student_context=self.student_context[level],
                    teacher_context=teacher_context[level],
                )
                for key, value in losses.items():
                    totals[key] = totals[key] + value
        return {
            "fg": totals["fg"] * self.alpha_fgd,
            "bg": totals["bg"] * self.beta_fgd,
            "attention": totals["attention"] * self.gamma_fgd,
            "global": totals["global"] * self.lambda_fgd,
        }

    def extra_repr(self) -> str:
        return (
            f"temp={self.temp}, alpha_fgd={self.alpha_fgd}, beta_fgd={self.beta_fgd}, gamma_fgd={self.gamma_fgd}, "
            f"lambda_fgd={self.lambda_fgd}, mask_extent={self.mask_extent!r}, box_reference={self.box_reference!r}"
        )


def build_fgd_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> FGDLoss:
    """The ``fgd`` term of ``distill.losses``.

    Options (defaults of the official RetinaNet R50 configs): ``temp`` 0.5, ``alpha_fgd`` 0.001,
    ``beta_fgd`` 0.0005, ``gamma_fgd`` 0.0005, ``lambda_fgd`` 5e-6, ``mask_extent`` inclusive |
    overlap, ``box_reference`` padded | valid, ``separate_gcblocks`` true, ``weight`` 1.0, ``name``
    loss_fgd. The term distils the maps the student's head runs on against the teacher's paired
    maps; a student of another FPN width gets 1x1 adapters.

    Raises:
        ConfigError: an unknown option, a wrong type or value, or a model without an FPN.
    """
    resolved = resolve_options(options, OPTIONS, term="fgd")
    levels = getattr(student, "in_features", None)
    if not levels:
        raise ConfigError(
            f"distill.losses entry of type 'fgd': the student ({type(student).__name__}) has no FPN levels"
        )
    try:
        return FGDLoss(**resolved, **fpn_widths(student, teacher, term="fgd"), num_levels=len(levels))
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'fgd': {exc}") from None
