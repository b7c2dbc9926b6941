"""Feature, relation and response losses of GID (Dai et al., CVPR 2021, arXiv 2103.02340).

All three losses work on the general instances (GIs) chosen by
:func:`msadkit.distill.gid.selection.select_general_instances`. The teacher is a fixed target: its
tensors are detached and need not require grad. The losses are returned unweighted;
:class:`GIDWeights` holds the weights of the public reproduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = [
    "GIDWeights",
    "assign_fpn_levels",
    "flatten_instances",
    "gid_feature_loss",
    "gid_relation_loss",
    "gid_response_loss",
]


@dataclass(frozen=True)
class GIDWeights:
    """Weights of the GID losses in the total loss ``L_GT + sum(weight * loss)``.

    The defaults are the effective weights of the public reproduction's experiment configs; the
    paper's split of the response weight into a global factor and cls/reg factors is not known.

    Attributes:
        feature: weight of :func:`gid_feature_loss` (5e-4; the reproduction's code default of
            5e-3 is not what its experiments used).
        relation: weight of :func:`gid_relation_loss`.
        response_cls: weight of the ``"cls"`` entry of :func:`gid_response_loss`.
        response_reg: weight of the ``"reg"`` entry of :func:`gid_response_loss`.
    """

    feature: float = 5e-4
    relation: float = 40.0
    response_cls: float = 0.1
    response_reg: float = 1.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"GIDWeights: {field.name} must be a finite number >= 0, got {value}")


def assign_fpn_levels(
    boxes: Tensor,
    *,
    min_level: int = 3,
    max_level: int = 7,
    canonical_size: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level of each box: ``floor(canonical_level + log2(sqrt(area) / canonical_size))``.

    A box of side ``canonical_size`` goes to ``canonical_level``; each halving or doubling of the
    side moves one level down or up. Results are clamped to ``[min_level, max_level]``.

    Args:
        boxes: ``(M, 4)`` boxes ``(x1, y1, x2, y2)`` in input-pixel coordinates.
        min_level: lowest available level.
        max_level: highest available level.
        canonical_size: box side that maps to ``canonical_level``.
        canonical_level: level of a ``canonical_size`` box.

    Returns:
        ``(M,)`` int64 level numbers (absolute, e.g. 3 for P3).
    """
    if min_level > max_level:
        raise ValueError(f"assign_fpn_levels: min_level {min_level} is above max_level {max_level}")
    sides = (boxes[:, 2:] - boxes[:, :2]).float().clamp_min(0.0)
    scale = (sides[:, 0] * sides[:, 1]).sqrt()
    # The small offset keeps exact powers of two (e.g. side 112) on their own level despite
    # rounding, and turns empty boxes into -inf-free values.
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_size + 1e-8))
    return levels.clamp(min_level, max_level).to(torch.int64)


def _levels_from_strides(strides: Sequence[int]) -> int:
    """Level number of the first stride; checks that the strides are consecutive powers of two."""
    first = math.log2(strides[0]) if strides and strides[0] > 0 else -1.0
    expected = [2 ** (int(first) + i) for i in range(len(strides))]
    if not strides or first != int(first) or list(strides) != expected:
        raise ValueError(
            "gid_feature_loss: strides must be consecutive powers of two such as [8, 16, 32, 64, 128], "
            f"got {list(strides)}"
        )
    return int(first)


def _per_level_adapters(
    adapter: nn.Module | Sequence[nn.Module] | None, num_levels: int
) -> list[nn.Module] | None:
    if adapter is None:
        return None
    if isinstance(adapter, (nn.ModuleList, list, tuple)):
        adapters = list(adapter)
        if len(adapters) != num_levels:
            raise ValueError(
                f"gid_feature_loss: adapter list has {len(adapters)} modules but there are {num_levels} levels"
            )
        return adapters
    if isinstance(adapter, nn.Module):
        return [adapter] * num_levels
    raise ValueError(
        f"gid_feature_loss: adapter must be an nn.Module, a list of them or None, got {type(adapter).__name__}"
    )


def _zero_with_graph(tensors: Sequence[Tensor], modules: Sequence[nn.Module] = ()) -> Tensor:
    """``0 * sum(inputs)``: a zero that keeps every input and parameter in the autograd graph.

    Distributed data parallel training fails on parameters that get no gradient in a step; this
    term gives them a zero gradient when there is nothing to distil.
    """
    total = tensors[0].new_zeros((), dtype=torch.float32)
    for tensor in tensors:
        total = total + tensor.float().sum()
    seen: set[int] = set()
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total = total + parameter.float().sum()
    return total * 0.0


def gid_feature_loss(
    student_features: list[Tensor],
    teacher_features: list[Tensor],
    boxes: list[Tensor],
    strides: list[int],
    *,
    output_size: int = 10,
    adapter: nn.Module | list[nn.Module] | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Feature imitation on the GI regions.

    Each GI box is pooled with ROIAlign (``aligned=True``, ``sampling_ratio=2``) on the FPN level
    given by :func:`assign_fpn_levels`, clamped to the levels passed in. The student map of a level
    first goes through its adapter (applied to the whole map, so 3x3 adapters also work). The loss
    is ``sum over GIs, channels and cells of (t - s)^2 / (M * S * S)`` with ``M`` the number of GIs
    in the batch and ``S = output_size``; with no GI it is ``0 * sum of the inputs`` so the graph
    stays intact. Adapters of levels without GIs get a zero gradient.

    Args:
        student_features: per level ``(N, Cs, Hi, Wi)`` student FPN maps, finest first.
        teacher_features: per level ``(N, Ct, Hi, Wi)`` teacher FPN maps, same levels.
        boxes: per image ``(Mi, 4)`` GI boxes ``(x1, y1, x2, y2)`` in input-pixel coordinates.
        strides: stride of each level, consecutive powers of two (e.g. ``[8, 16, 32, 64, 128]``);
            ``log2(stride)`` is the level number used in the assignment.
        output_size: ROIAlign output side ``S``.
        adapter: one module per level, one module shared by all levels, or ``None`` (identity,
            only when ``Cs == Ct``). Each maps ``(N, Cs, H, W)`` to ``(N, Ct, H, W)``.

    Returns:
        ``(loss, student_rois, teacher_rois)``: the scalar loss (fp32) and, per image, the pooled
        adapted student features ``(Mi, Ct, S, S)`` and teacher features ``(Mi, Ct, S, S)``
        (detached) in the order of ``boxes``, ready for :func:`flatten_instances`.

    Raises:
        ValueError: on mismatched level or image counts, bad strides, or channel counts that differ
            after the adapter (or without one).
    """
    num_levels = len(strides)
    if len(student_features) != num_levels or len(teacher_features) != num_levels:
        raise ValueError(
            f"gid_feature_loss: got {len(student_features)} student levels, {len(teacher_features)} teacher "
            f"levels and {num_levels} strides; they must match"
        )
    first_level = _levels_from_strides(strides)
    if output_size < 1:
        raise ValueError(f"gid_feature_loss: output_size must be >= 1, got {output_size}")
    num_images = teacher_features[0].shape[0]
    if len(boxes) != num_images:
        raise ValueError(f"gid_feature_loss: got {len(boxes)} boxes tensors for a batch of {num_images} images")
    adapters = _per_level_adapters(adapter, num_levels)
    teacher_channels = teacher_features[0].shape[1]
    if adapters is None:
        for level, (student_map, teacher_map) in enumerate(zip(student_features, teacher_features)):
            if student_map.shape[1] != teacher_map.shape[1]:
                raise ValueError(
                    f"gid_feature_loss: level {first_level + level} has {student_map.shape[1]} student channels "
                    f"and {teacher_map.shape[1]} teacher channels; pass an adapter to map one to the other"
                )

    counts = [int(b.shape[0]) for b in boxes]
    device = teacher_features[0].device
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).detach().float().to(device)
    image_index = torch.repeat_interleave(
        torch.arange(num_images, device=device), torch.tensor(counts, device=device)
    )
    last_level = first_level + num_levels - 1
    levels = assign_fpn_levels(all_boxes, min_level=first_level, max_level=last_level) - first_level

    graph_anchor = _zero_with_graph(student_features, adapters or ())
    student_parts, teacher_parts, order = [], [], []
    with torch.autocast(device_type=device.type, enabled=False):
        for level in range(num_levels):
            chosen = torch.nonzero(levels == level).squeeze(1)
            if chosen.numel() == 0:
                continue
            student_map = student_features[level]
            if adapters is not None:
                student_map = adapters[level](student_map.float())
            teacher_map = teacher_features[level].detach()
            if student_map.shape[1] != teacher_map.shape[1]:
                raise ValueError(
                    f"gid_feature_loss: the adapter of level {first_level + level} gives {student_map.shape[1]} "
                    f"channels but the teacher has {teacher_map.shape[1]}"
                )
            rois = torch.cat([image_index[chosen].unsqueeze(1).float(), all_boxes[chosen]], dim=1)
            pool = dict(output_size=output_size, spatial_scale=1.0 / strides[level], sampling_ratio=2, aligned=True)
            student_parts.append(roi_align(student_map.float(), rois, **pool))
            teacher_parts.append(roi_align(teacher_map.float(), rois, **pool))
            order.append(chosen)

    num_instances = all_boxes.shape[0]
    if num_instances == 0:
        empty = teacher_features[0].new_zeros((0, teacher_channels, output_size, output_size), dtype=torch.float32)
        return graph_anchor, [empty] * num_images, [empty] * num_images

    restore = torch.argsort(torch.cat(order))
    student_rois = torch.cat(student_parts)[restore]
    teacher_rois = torch.cat(teacher_parts)[restore]
    loss = (teacher_rois - student_rois).pow(2).sum() / (num_instances * output_size * output_size)
    return loss + graph_anchor, list(student_rois.split(counts)), list(teacher_rois.split(counts))


def flatten_instances(per_image_rois: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Turn per-image pooled features into relation-loss inputs.

    Args:
        per_image_rois: per image ``(Mi, C, S, S)`` pooled features.

    Returns:
        ``(embeddings, image_index)``: ``(M, C*S*S)`` flattened features and ``(M,)`` int64 image
        numbers.
    """
    embeddings = torch.cat([rois.flatten(1) for rois in per_image_rois])
    counts = torch.tensor([rois.shape[0] for rois in per_image_rois], device=embeddings.device)
    image_index = torch.repeat_interleave(torch.arange(len(per_image_rois), device=embeddings.device), counts)
    return embeddings, image_index


def _normalised_distances(embeddings: Tensor, pair_mask: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Pairwise distances ``(M, M)``, each group divided by the mean of its counted pairs."""
    distances = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    row_sums = torch.where(pair_mask, distances, torch.zeros_like(distances)).sum(dim=1)
    row_pairs = pair_mask.sum(dim=1).to(distances.dtype)
    group_sums = distances.new_zeros(num_groups).index_add(0, groups, row_sums)
    group_pairs = distances.new_zeros(num_groups).index_add(0, groups, row_pairs)
    group_means = (group_sums / group_pairs.clamp_min(1.0)).clamp_min(1e-12)
    return distances / group_means[groups].unsqueeze(1)


def gid_relation_loss(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    image_index: Tensor,
    *,
    per_image: bool = True,
) -> Tensor:
    """Relation distillation: match the normalised pairwise distances between GIs.

    Distances are Euclidean; each distance matrix (one per image, or one for the batch) is divided
    by the mean of its off-diagonal entries (clamped at ``1e-12``). The loss is smooth-L1
    (``beta = 1``) between student and teacher normalised distances, averaged over the ``i != j``
    pairs counted. Scaling either embedding set leaves the loss unchanged.

    Args:
        student_embeddings: ``(M, Ds)`` student instance embeddings (e.g. flattened ROI features).
        teacher_embeddings: ``(M, Dt)`` teacher instance embeddings; ``Dt`` may differ from ``Ds``.
        image_index: ``(M,)`` int64 image of each instance.
        per_image: ``True`` (default) forms pairs only within each image and skips images with
            fewer than 3 instances; ``False`` forms all pairs across the batch, as the public
            reproduction does, and needs at least 3 instances in all.

    Returns:
        Scalar loss (fp32); ``0 * sum(student_embeddings)`` when no pair counts.
    """
    if student_embeddings.dim() != 2 or teacher_embeddings.dim() != 2:
        raise ValueError(
            "gid_relation_loss: embeddings must have shape (M, D), got student_embeddings "
            f"{tuple(student_embeddings.shape)} and teacher_embeddings {tuple(teacher_embeddings.shape)}"
        )
    num_instances = student_embeddings.shape[0]
    if teacher_embeddings.shape[0] != num_instances:
        raise ValueError(
            f"gid_relation_loss: student_embeddings has {num_instances} instances but teacher_embeddings "
            f"has {teacher_embeddings.shape[0]}"
        )
    if tuple(image_index.shape) != (num_instances,):
        raise ValueError(
            f"gid_relation_loss: image_index must have shape ({num_instances},), got {tuple(image_index.shape)}"
        )
    if num_instances > 0 and int(image_index.min()) < 0:
        raise ValueError("gid_relation_loss: image_index must be >= 0")

    with torch.autocast(device_type=student_embeddings.device.type, enabled=False):
        student = student_embeddings.float()
        teacher = teacher_embeddings.detach().float()
        if per_image:
            groups = image_index.to(device=student.device, dtype=torch.int64)
        else:
            groups = torch.zeros(num_instances, dtype=torch.int64, device=student.device)
        group_sizes = torch.bincount(groups)
        large_enough = group_sizes[groups] >= 3
        pair_mask = (groups.unsqueeze(1) == groups.unsqueeze(0)) & large_enough.unsqueeze(1)
        pair_mask &= ~torch.eye(num_instances, dtype=torch.bool, device=student.device)
        num_pairs = int(pair_mask.sum())
        if num_pairs == 0:
            return student.sum() * 0.0

        num_groups = group_sizes.numel()
        student_distances = _normalised_distances(student, pair_mask, groups, num_groups)
        teacher_distances = _normalised_distances(teacher, pair_mask, groups, num_groups)
        per_pair = F.smooth_l1_loss(student_distances, teacher_distances, reduction="none", beta=1.0)
        return torch.where(pair_mask, per_pair, torch.zeros_like(per_pair)).sum() / num_pairs


def gid_response_loss(
    student_cls_logits: Tensor,
    teacher_cls_logits: Tensor,
    student_box_reg: Tensor,
    teacher_box_reg: Tensor,
    mask: Tensor,
) -> dict[str, Tensor]:
    """Response distillation on the locations/anchors that the detector assigns to GI boxes.

    ``cls`` is the binary cross-entropy between the student logits and the teacher probabilities
    ``sigmoid(teacher)``, summed over masked rows and classes; ``reg`` is the L1 distance between
    the box regression outputs, summed over masked rows and coordinates. Both are divided by
    ``max(number of masked rows, 1)`` and returned unweighted (see :class:`GIDWeights`).

    Args:
        student_cls_logits: ``(N, R, K)`` student classification logits.
        teacher_cls_logits: ``(N, R, K)`` teacher classification logits.
        student_box_reg: ``(N, R, 4)`` student box regression outputs (deltas or distances).
        teacher_box_reg: ``(N, R, 4)`` teacher box regression outputs, same parametrisation.
        mask: ``(N, R)`` bool, the detector's own assignment of its locations/anchors to the GIs.
            Any leading shape works as long as it is shared by all five tensors.

    Returns:
        ``{"cls": Tensor, "reg": Tensor}``, scalar fp32 losses; zero (graph intact) if the mask is
        empty.
    """
    if student_cls_logits.shape != teacher_cls_logits.shape:
        raise ValueError(
            f"gid_response_loss: student_cls_logits {tuple(student_cls_logits.shape)} and teacher_cls_logits "
            f"{tuple(teacher_cls_logits.shape)} must have the same shape"
        )
    if student_box_reg.shape != teacher_box_reg.shape:
        raise ValueError(
            f"gid_response_loss: student_box_reg {tuple(student_box_reg.shape)} and teacher_box_reg "
            f"{tuple(teacher_box_reg.shape)} must have the same shape"
        )
    rows = student_cls_logits.shape[:-1]
    if mask.dtype != torch.bool or mask.shape != rows or student_box_reg.shape[:-1] != rows:
        raise ValueError(
            f"gid_response_loss: mask ({mask.dtype}, {tuple(mask.shape)}) must be bool with the leading shape "
            f"{tuple(rows)} of the logits, and the box outputs {tuple(student_box_reg.shape)} must share it"
        )

    with torch.autocast(device_type=student_cls_logits.device.type, enabled=False):
        num_masked = mask.sum().clamp_min(1).float()
        student_cls = student_cls_logits[mask].float()
        teacher_prob = torch.sigmoid(teacher_cls_logits.detach()[mask].float())
        cls = F.binary_cross_entropy_with_logits(student_cls, teacher_prob, reduction="sum") / num_masked
        box_gap = student_box_reg[mask].float() - teacher_box_reg.detach()[mask].float()
        reg = box_gap.abs().sum() / num_masked
    return {"cls": cls, "reg": reg}
