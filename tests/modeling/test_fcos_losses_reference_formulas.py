"""FCOS losses against independent formulas: torchvision's focal loss and GIoU on corner boxes,
the centerness target and the BCE written out, with hand-made positive counts and weights."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from msadkit.modeling.detectors.fcos_losses import (
    fcos_losses,
    ltrb_giou_loss,
    sigmoid_focal_loss_sum,
)
from msadkit.modeling.detectors.fcos_targets import FCOSTargets


def assert_float32_close(got: torch.Tensor, want: torch.Tensor, msg: str | None = None) -> None:
    """A float32 result (the losses compute in float32, as in training) against its float64
    reference: a few float32 rounding units of each value, and of the largest value for elements
    that sums and differences bring near zero. float64's own tolerance (1e-7) is below one float32
    rounding unit (1.2e-7) and passed only by luck of the kernels' summation order."""
    tolerance = 16 * torch.finfo(torch.float32).eps
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * scale, msg=msg)


def corners(ltrb: torch.Tensor) -> torch.Tensor:
    """``(R, 4)`` distances from a point at the origin -> ``(R, 4)`` xyxy boxes."""
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def corner_giou_loss(pred: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """``1 - GIoU`` from xyxy corners, with ``smoothing`` added to intersection and union."""
    if smoothing == 0:
        return 1 - generalized_box_iou(corners(pred), corners(target)).diagonal()
    a, b = corners(pred), corners(target)
    inter = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0) * (
        torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])
    ).clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2], b[:, 2]) - torch.minimum(a[:, 0], b[:, 0])) * (
        torch.maximum(a[:, 3], b[:, 3]) - torch.minimum(a[:, 1], b[:, 1])
    )
    return 1 - ((inter + smoothing) / (union + smoothing) - (hull - union) / hull)


def centerness_by_hand(ltrb: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [math.sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for l, t, r, b in ltrb.tolist()],
        dtype=ltrb.dtype,
    )


def bce_sum_by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(
        target * torch.nn.functional.logsigmoid(logits) + (1 - target) * torch.nn.functional.logsigmoid(-logits)
    ).sum()


def make_batch(labels: list[list[int]], num_classes: int, seed: int = 0):
    """Random predictions and targets; positive locations get random positive distances."""
    gen = torch.Generator().manual_seed(seed)
    labels_t = torch.tensor(labels)
    n, r = labels_t.shape
    positive = labels_t != num_classes
    reg_targets = (torch.rand(n, r, 4, generator=gen, dtype=torch.float64) * 3 + 0.1) * positive[..., None]
    targets = FCOSTargets(labels=labels_t, reg_targets=reg_targets, matched_gt=torch.where(positive, 0, -1))
    cls_logits = (torch.randn(n, r, num_classes, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    bbox_reg = (torch.rand(n, r, 4, generator=gen, dtype=torch.float64) * 3 + 0.05).requires_grad_()
    centerness = torch.randn(n, r, generator=gen, dtype=torch.float64).requires_grad_()
    return cls_logits, bbox_reg, centerness, targets


def reference_losses(cls_logits, bbox_reg, centerness, targets, alpha, gamma, smoothing):
    num_classes = cls_logits.shape[-1]
    positive = targets.labels != num_classes
    num_pos = max(int(positive.sum()), 1)
    one_hot = torch.nn.functional.one_hot(targets.labels, num_classes + 1)[..., :num_classes].to(cls_logits.dtype)
    cls = sigmoid_focal_loss(cls_logits, one_hot, alpha=alpha, gamma=gamma, reduction="sum") / num_pos
    reg_target = targets.reg_targets[positive]
    ctr_target = centerness_by_hand(reg_target)
    giou = corner_giou_loss(bbox_reg[positive], reg_target, smoothing)
    loc = (giou * ctr_target).sum() / ctr_target.sum()
    ctr = bce_sum_by_hand(centerness[positive], ctr_target) / num_pos
    return {"loss_fcos_cls": cls, "loss_fcos_loc": loc, "loss_fcos_ctr": ctr}


LABELS = [[0, 3, 2, 3, 1, 3, 0, 3, 3], [3, 3, 1, 2, 3, 0, 3, 2, 3]]  # 3 = background, 8 positives


@pytest.mark.parametrize(
    "kwargs, alpha, gamma, smoothing",
    [
        ({}, 0.25, 2.0, 0.0),
        ({"focal_alpha": 0.6, "focal_gamma": 1.5, "giou_smoothing": 1.0}, 0.6, 1.5, 1.0),
        ({"focal_alpha": -1.0, "focal_gamma": 0.0, "giou_smoothing": 0.5}, -1.0, 0.0, 0.5),
    ],
)
def test_losses_match_independent_formulas(kwargs, alpha, gamma, smoothing):
    batch = make_batch(LABELS, num_classes=3)
    ours = fcos_losses(*batch, **kwargs)
    assert set(ours) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    expected = reference_losses(*batch, alpha=alpha, gamma=gamma, smoothing=smoothing)
    for name, value in expected.items():
        assert_float32_close(ours[name], value, msg=name)
        # Every loss carries gradients to the predictions it depends on, equal to the reference's.
        inputs = batch[:3]
        got = torch.autograd.grad(ours[name], inputs, allow_unused=True, retain_graph=True)
        want = torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)
        for g, w in zip(got, want):
            if w is None:
                assert g is None or not g.any()
            else:
                assert_float32_close(g, w, msg=name)


def test_single_positive_divides_by_one_and_by_its_centerness():
    # One positive (num_pos 1) whose centerness target is well below 1, so the normalisers are
    # exactly 1 and the centerness itself: loc = giou, ctr = BCE, cls = focal sum.
    labels = [[2, 0, 2, 2]]
    cls_logits, bbox_reg, centerness, targets = make_batch(labels, num_classes=2, seed=3)
    targets.reg_targets[0, 1] = torch.tensor([1.0, 0.5, 3.0, 2.0], dtype=torch.float64)  # ctr sqrt(1/3 * 1/4)
    ours = fcos_losses(cls_logits, bbox_reg, centerness, targets)
    ctr_target = math.sqrt(1 / 3 * 1 / 4)
    one_hot = torch.nn.functional.one_hot(targets.labels, 3)[..., :2].double()
    assert_float32_close(ours["loss_fcos_cls"], sigmoid_focal_loss(cls_logits, one_hot, reduction="sum"))
    giou = corner_giou_loss(bbox_reg[0, 1:2], targets.reg_targets[0, 1:2], 0.0)[0]
    assert_float32_close(ours["loss_fcos_loc"], giou)
    assert_float32_close(
        ours["loss_fcos_ctr"], bce_sum_by_hand(centerness[0, 1:2], torch.tensor([ctr_target], dtype=torch.float64))
    )


def test_no_positive_gives_zero_box_losses_with_zero_gradients():
    cls_logits, bbox_reg, centerness, targets = make_batch([[2, 2, 2]], num_classes=2, seed=5)
    ours = fcos_losses(cls_logits, bbox_reg, centerness, targets)
    assert set(ours) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    no_positive = torch.zeros_like(cls_logits)
    assert_float32_close(ours["loss_fcos_cls"], sigmoid_focal_loss(cls_logits, no_positive, reduction="sum"))
    assert ours["loss_fcos_loc"].item() == 0.0 and ours["loss_fcos_ctr"].item() == 0.0
    grads = torch.autograd.grad(ours["loss_fcos_loc"] + ours["loss_fcos_ctr"], [bbox_reg, centerness])
    assert all(g is not None and torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("alpha", [0.25, 0.0, 1.0, 0.7, -1.0])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5, 3.0])
def test_focal_sum_matches_torchvision_for_any_weights(alpha, gamma):
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 3, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    # -1 and 3 (= K) have no positive class; 0 is a real class.
    labels = torch.tensor([[0, 3, 2, -1, 1], [3, 0, 1, 2, 0]])
    one_hot = torch.zeros(2, 5, 3, dtype=torch.float64)
    for (i, j), label in zip([(i, j) for i in range(2) for j in range(5)], labels.flatten().tolist()):
        if 0 <= label < 3:
            one_hot[i, j, label] = 1
    ours = sigmoid_focal_loss_sum(logits, labels, alpha=alpha, gamma=gamma)
    reference = sigmoid_focal_loss(logits, one_hot, alpha=alpha, gamma=gamma, reduction="sum")
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(reference, logits)[0])


def test_focal_sum_defaults_are_alpha_quarter_gamma_two():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 6, generator=gen, dtype=torch.float64) * 2
    labels = torch.tensor([[5, 6, 0, 3]])
    one_hot = torch.nn.functional.one_hot(labels, 7)[..., :6].double()
    reference = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss_sum(logits, labels), reference)


@pytest.mark.parametrize("smoothing", [0.0, 1.0, 0.3])
def test_giou_loss_matches_corner_formula_with_smoothing(smoothing):
    gen = torch.Generator().manual_seed(4)
    for scale in (0.3, 1.0, 20.0):
        pred = (torch.rand(64, 4, generator=gen, dtype=torch.float64) + 0.02) * scale
        target = (torch.rand(64, 4, generator=gen, dtype=torch.float64) + 0.02) * scale
        torch.testing.assert_close(
            ltrb_giou_loss(pred, target, smoothing=smoothing), corner_giou_loss(pred, target, smoothing)
        )
    # The default is the plain GIoU.
    torch.testing.assert_close(ltrb_giou_loss(pred, target), corner_giou_loss(pred, target, 0.0))


def test_random_boxes_small_and_large_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    for scale in (0.2, 1.0, 50.0):
        # Enclosing boxes smaller than one unit at the smallest scale, with all four sides different.
        pred = (torch.rand(200, 4, generator=gen, dtype=torch.float64) + 0.05) * scale
        target = (torch.rand(200, 4, generator=gen, dtype=torch.float64) + 0.05) * scale
        expected = 1 - generalized_box_iou(corners(pred), corners(target)).diagonal()
        torch.testing.assert_close(ltrb_giou_loss(pred, target), expected)


def test_boxes_touching_at_the_point_by_hand():
    # pred spans x in [0, 2], y in [0, 1]; target x in [-1, 0], y in [-1, 0]: no overlap, union 3,
    # enclosing box 3 x 2 = 6, GIoU = 0 - (6 - 3) / 6 = -0.5, loss 1.5.
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(ltrb_giou_loss(pred, target), torch.tensor([1.5]))
