"""Masked generative distillation, MGD (Yang et al., "Masked Generative Distillation", ECCV 2022),
on the FPN levels (docs/methods.md, "MGD").

Per level, the student map (through a 1x1 ``align`` conv when the widths differ) is multiplied by a
random spatial mask, a generation block ``conv3x3 - ReLU - conv3x3`` (teacher width) turns it into a
guess of the whole teacher map, and the squared error is summed and divided by the batch size:

    M_{n,1,h,w} = 0 if u_{n,h,w} > 1 - lambda_mgd else 1,   u ~ U[0, 1)
    L = alpha_mgd * sum_l sum_{n,c,h,w} (G_l(align_l(S_l) * M_l) - T_l)^2 / N

Source: yzd-v/MGD 2c9da0b, ``det/mmdet/distillation/losses/mgd.py`` (``FeatureLoss``) and
``det/configs/distillers/mgd/retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``
(``alpha_mgd = 0.00002``, ``lambda_mgd = 0.65``, all five FPN levels); mmrazor's ``MGDLoss`` and
``MGDConnector`` compute the same. Each level has its own align conv and generation block; they
are trained with the student and left out of the deployed model.

The masks are drawn from a generator of their own, seeded from ``(seed, iteration, rank)``
(:func:`mask_seed`), never from the global random stream: the mask of a step depends on nothing
but the step, so a resumed run draws the masks the uninterrupted run drew, and the term does not
shift the random numbers anything else draws.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.feature_pairs import (
    as_loss_dtype,
    check_level_counts,
    sum_over_adapted_pairs,
)
from msadkit.distill.layout import fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["mask_seed", "draw_masks", "mgd_loss", "make_generation_block", "MGDTerm", "build_mgd_term", "OPTIONS"]

# Options of a ``type: mgd`` entry and their defaults (the official RetinaNet config, see above).
OPTIONS: dict[str, Any] = {"alpha_mgd": 2e-5, "lambda_mgd": 0.65, "seed": 0}


def mask_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """Seed of the mask generator of one step: ``((seed * 1_000_003 + iteration) * 65_537 + rank) mod 2^63``."""
    return ((seed * 1_000_003 + iteration) * 65_537 + rank) % (1 << 63)


def draw_masks(shapes: Sequence[tuple[int, int, int]], *, lambda_mgd: float, seed: int) -> list[Tensor]:
    """One ``(N, 1, H, W)`` float mask per level, 0 with probability ``lambda_mgd``, else 1.

    The levels draw in order from one CPU generator seeded with ``seed``: ``u = rand(N, 1, H, W)``,
    masked where ``u > 1 - lambda_mgd`` (the official comparison).

    Args:
        shapes: ``(N, H, W)`` of each level.
        lambda_mgd: masked fraction in ``[0, 1]``.
        seed: from :func:`mask_seed`.
    """
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for n, h, w in shapes:
        uniform = torch.rand((n, 1, h, w), generator=generator)
        masks.append((uniform <= 1.0 - lambda_mgd).to(torch.float32))
    return masks


def make_generation_block(channels: int) -> nn.Sequential:
    """``conv3x3 - ReLU - conv3x3`` on ``channels`` channels, size-preserving."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    )


def mgd_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    masks: Sequence[Tensor],
    generators: Sequence[nn.Module],
    *,
    aligns: Sequence[nn.Module] | None = None,
    alpha_mgd: float = 2e-5,
    term: str = "mgd",
) -> Tensor:
    """``alpha_mgd * sum_l ||G_l(align_l(S_l) * M_l) - T_l||^2 / N`` over the paired levels.

    Args:
        student_maps: ``L`` maps ``(N, Cs, Hi, Wi)``.
        teacher_maps: ``L`` maps ``(N, Ct, Hi, Wi)`` (detached here).
        masks: ``L`` masks ``(N, 1, Hi, Wi)`` (moved to the maps' device and dtype).
        generators: at least ``L`` generation blocks on ``Ct`` channels.
        aligns: at least ``L`` modules mapping ``Cs`` to ``Ct`` channels, or None.
        alpha_mgd: factor of the sum.
        term: for messages.
    """
    levels = len(student_maps)
    if len(generators) < levels or (aligns is not None and len(aligns) < levels) or len(masks) != levels:
        raise ValueError(f"{term}: {levels} levels need as many masks, generation blocks and aligns")

    def generation_error(level: int, student: Tensor, teacher: Tensor) -> Tensor:
        generated = generators[level](student * masks[level].to(device=student.device, dtype=student.dtype))
        return (as_loss_dtype(generated) - as_loss_dtype(teacher)).square().sum() / teacher.shape[0]

    return alpha_mgd * sum_over_adapted_pairs(student_maps, teacher_maps, aligns, generation_error, term=term)


class MGDTerm(DistillationLoss):
    """MGD on every paired FPN level.

    Args:
        name: key of the loss in the loss dict.
        weight: factor the distiller applies.
        alpha_mgd: factor of the summed squared errors.
        lambda_mgd: masked fraction of the positions.
        seed: mixed with the iteration and the process rank into the mask seed.
        student_channels / teacher_channels: FPN widths; a 1x1 align conv per level when they differ.
        num_levels: number of levels (generation blocks).
    """

    def __init__(
        self,
        *,
        name: str = "loss_mgd",
        weight: float = 1.0,
        alpha_mgd: float = 2e-5,
        lambda_mgd: float = 0.65,
        seed: int = 0,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if alpha_mgd < 0:
            raise ValueError(f"alpha_mgd must be >= 0, got {alpha_mgd}")
        if not 0.0 <= lambda_mgd <= 1.0:
            raise ValueError(f"lambda_mgd must lie in [0, 1], got {lambda_mgd}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.alpha_mgd = float(alpha_mgd)
        self.lambda_mgd = float(lambda_mgd)
        self.seed = int(seed)
        self.aligns = adapters_if_widths_differ(student_channels, teacher_channels, num_levels=num_levels)
        self.generators = nn.ModuleList(make_generation_block(teacher_channels) for _ in range(num_levels))

    def masks_for(self, maps: Sequence[Tensor], iteration: int) -> list[Tensor]:
        """The masks of step ``iteration`` for ``maps`` ``(N, C, Hi, Wi)`` (CPU, float32)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        # Each process sees other images; its own stream of masks keeps them independent.
        rank = torch.distributed.get_rank() if distributed else 0
        shapes = [(m.shape[0], m.shape[-2], m.shape[-1]) for m in maps]
        return draw_masks(shapes, lambda_mgd=self.lambda_mgd, seed=mask_seed(self.seed, iteration, rank))

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"": scalar}`` (the distiller applies ``weight``); ``student.levels`` and
        ``teacher.levels`` are ``L`` paired maps ``(N, C, Hi, Wi)``; ``iteration`` seeds the masks."""
        del targets
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        masks = self.masks_for(student.levels, iteration)
        loss = mgd_loss(
            student.levels,
            teacher.levels,
            masks,
            self.generators,
            aligns=self.aligns,
            alpha_mgd=self.alpha_mgd,
            term=self.name,
        )
        return {"": loss}

    def extra_repr(self) -> str:
        return f"alpha_mgd={self.alpha_mgd}, lambda_mgd={self.lambda_mgd}, seed={self.seed}, weight={self.weight}"


def build_mgd_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> MGDTerm:
    """``type: mgd`` with options ``weight`` (1.0), ``name`` (loss_mgd), ``alpha_mgd`` (2e-5),
    ``lambda_mgd`` (0.65), ``seed`` (0).

    Raises:
        ConfigError: an unknown option or value, a model without FPN levels, or level counts that differ.
    """
    values = resolve_options(options, OPTIONS, term="mgd")
    where = "distill.losses type 'mgd'"
    if values["alpha_mgd"] < 0:
        raise ConfigError(f"{where}: alpha_mgd must be >= 0, got {values['alpha_mgd']}")
    if not 0.0 <= values["lambda_mgd"] <= 1.0:
        raise ConfigError(f"{where}: lambda_mgd must lie in [0, 1], got {values['lambda_mgd']}")
    if not isinstance(values["seed"], int) or values["seed"] < 0:
        raise ConfigError(f"{where}: seed must be an integer >= 0, got {values['seed']!r}")
    num_levels = check_level_counts(student, teacher, term="mgd")
    return MGDTerm(**values, **fpn_widths(student, teacher, term="mgd"), num_levels=num_levels)
