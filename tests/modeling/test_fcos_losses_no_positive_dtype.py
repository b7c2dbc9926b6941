"""A batch without positive locations gives float32 box losses, like a batch with positives."""

from __future__ import annotations

import torch

from msadkit.modeling.detectors.fcos_losses import fcos_losses
from msadkit.modeling.detectors.fcos_targets import FCOSTargets


def test_bf16_predictions_without_positives_give_float32_zero_losses():
    # Under bf16 autocast the head's outputs are bf16; the losses of a batch with positives are
    # computed in float32, and so must be the zero losses of a batch without any.
    targets = FCOSTargets(
        labels=torch.full((2, 5), 3), reg_targets=torch.zeros(2, 5, 4), matched_gt=torch.full((2, 5), -1)
    )
    cls_logits = torch.randn(2, 5, 3).bfloat16().requires_grad_()
    bbox_reg = torch.rand(2, 5, 4).bfloat16().requires_grad_()
    centerness = torch.randn(2, 5).bfloat16().requires_grad_()
    losses = fcos_losses(cls_logits, bbox_reg, centerness, targets)
    assert {name: value.dtype for name, value in losses.items()} == dict.fromkeys(losses, torch.float32)
    assert losses["loss_fcos_loc"].item() == 0.0 and losses["loss_fcos_ctr"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.equal(bbox_reg.grad, torch.zeros_like(bbox_reg)) and torch.equal(
        centerness.grad, torch.zeros_like(centerness)
    )
    assert cls_logits.grad is not None and cls_logits.grad.abs().sum() > 0
