"""FCOS: location grid, target assignment, losses and post-processing on hand-made cases."""

import math

import pytest
import torch
from torch import nn

from msadkit.errors import InputError
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.fcos_losses import fcos_losses, ltrb_giou_loss
from msadkit.modeling.detectors.fcos_targets import assign_fcos_targets, centerness_target, compute_locations
from msadkit.modeling.heads.fcos_head import FCOSHead


class TinyPyramid(nn.Module):
    """A stand-in backbone: strided convs producing p3..p7 with 64 channels."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, stride=8, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, images):
        x = self.stem(images)
        out = {"p3": x}
        for i, conv in enumerate(self.down):
            x = conv(x)
            out[f"p{i + 4}"] = x
        return out


def make_fcos(num_classes=3, **kwargs) -> FCOS:
    torch.manual_seed(0)
    head = FCOSHead(in_channels=64, num_classes=num_classes, num_convs=1, norm="GN")
    return FCOS(backbone=TinyPyramid(), head=head, num_classes=num_classes, **kwargs)


def test_locations_are_cell_centres():
    (loc,) = compute_locations([(2, 3)], [8])
    expected = torch.tensor([[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32)
    torch.testing.assert_close(loc, expected)


def test_centerness_target_by_hand():
    ltrb = torch.tensor([[2.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    expected = torch.tensor([math.sqrt(1.0 * (1 / 3)), 1.0])
    torch.testing.assert_close(centerness_target(ltrb), expected)


def test_assignment_single_box_centre_sampling():
    # One level, stride 8, a 4x4 grid (centres 4, 12, 20, 28). Box (0, 0, 32, 32), centre (16, 16):
    # the centre region with radius 1.5 is 16 +- 12 -> (4, 28) exclusive, so centres 12 and 20 are
    # inside on each axis -> 4 positive locations.
    locations = compute_locations([(4, 4)], [8])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([2])}]
    out = assign_fcos_targets(locations, [8], targets, num_classes=3, sizes_of_interest=[(-1, 1e8)])
    positive = (out.labels[0] != 3).view(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(positive, expected)
    assert set(out.labels[0][positive.flatten()].tolist()) == {2}
    # Location (12, 12): l=12, t=12, r=20, b=20, divided by stride 8.
    index = 1 * 4 + 1
    torch.testing.assert_close(out.reg_targets[0, index], torch.tensor([12.0, 12.0, 20.0, 20.0]) / 8)
    assert out.matched_gt[0, index] == 0 and out.matched_gt[0, 0] == -1


def test_assignment_without_centre_sampling_uses_whole_box():
    locations = compute_locations([(4, 4)], [8])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0]]), "labels": torch.tensor([0])}]
    out = assign_fcos_targets(
        locations, [8], targets, num_classes=3, sizes_of_interest=[(-1, 1e8)], center_sampling_radius=0
    )
    assert int((out.labels[0] != 3).sum()) == 16


def test_assignment_prefers_smaller_box_and_respects_size_ranges():
    locations = compute_locations([(4, 4), (2, 2)], [8, 16])
    big = [0.0, 0.0, 32.0, 32.0]
    small = [8.0, 8.0, 24.0, 24.0]
    targets = [{"boxes": torch.tensor([big, small]), "labels": torch.tensor([0, 1])}]
    out = assign_fcos_targets(locations, [8, 16], targets, num_classes=2, sizes_of_interest=[(-1, 64), (64, 128)])
    # Location (12, 12) on level 0 is inside both; the small box (area 256) wins over the big one (1024).
    assert out.labels[0, 5] == 1 and out.matched_gt[0, 5] == 1
    # Level 1 accepts only max distances in [64, 128]: nothing here is that large.
    assert torch.all(out.labels[0, 16:] == 2)


def test_assignment_empty_image_is_all_background():
    locations = compute_locations([(3, 3)], [8])
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = assign_fcos_targets(locations, [8], targets, num_classes=4)
    assert torch.all(out.labels == 4) and torch.all(out.matched_gt == -1) and out.reg_targets.abs().sum() == 0


def test_giou_loss_by_hand():
    # Same point: pred box 2x2 (1,1,1,1); target 4x2 (3,1,1,1): intersection 2*2=4, union 4+8-4=8,
    # IoU 0.5, enclosing box 4x2=8 -> GIoU 0.5, loss 0.5.
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(ltrb_giou_loss(pred, target), torch.tensor([0.5, 0.0]))


def test_fcos_losses_by_hand():
    # One image, two locations, one class. Location 0 is positive with a perfect box and a
    # centerness target of 1; location 1 is background.
    logits = torch.tensor([[[0.0], [0.0]]])
    reg = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    ctr = torch.tensor([[0.0, 0.0]])

    class T:
        labels = torch.tensor([[0, 1]])
        reg_targets = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])

    losses = fcos_losses(logits, reg, ctr, T)
    # Focal at p=0.5: positive 0.25 * 0.25 * log 2, negative 0.75 * 0.25 * log 2; one positive.
    expected_cls = 0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)
    assert losses["loss_fcos_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_fcos_loc"].item() == pytest.approx(0.0, abs=1e-6)
    # BCE(logit 0, target 1) = log 2.
    assert losses["loss_fcos_ctr"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_training_loss_decreases_and_detects_the_box():
    model = make_fcos(num_classes=2)
    images = torch.zeros(1, 3, 128, 128)
    images[:, :, 32:96, 40:100] = 1.0
    targets = [{"boxes": torch.tensor([[40.0, 32.0, 100.0, 96.0]]), "labels": torch.tensor([1])}]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(40):
        losses = model(images, [(128, 128)], targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.5 * history[0]
    assert losses["loss_fcos_loc"].item() < 0.5  # GIoU > 0.5 on the positives
    model.eval()
    (det,) = model(images, [(128, 128)])
    assert det["labels"][0].item() == 1
    best = det["boxes"][0]
    inter_w = (torch.minimum(best[2], torch.tensor(100.0)) - torch.maximum(best[0], torch.tensor(40.0))).clamp(min=0)
    inter_h = (torch.minimum(best[3], torch.tensor(96.0)) - torch.maximum(best[1], torch.tensor(32.0))).clamp(min=0)
    area = (best[2] - best[0]) * (best[3] - best[1])
    iou = inter_w * inter_h / (area + 60 * 64 - inter_w * inter_h)
    assert iou > 0.5


def test_empty_image_training_gives_finite_losses_and_gradients():
    model = make_fcos()
    model.train()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    losses = model(torch.randn(2, 3, 64, 64), [(64, 64)] * 2, targets)
    assert losses["loss_fcos_loc"].item() == 0 and losses["loss_fcos_ctr"].item() == 0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_postprocess_decodes_boxes_and_applies_thresholds():
    model = make_fcos(num_classes=2, score_thresh=0.3, nms_thresh=0.5)
    model.eval()
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    preds = {
        "cls_logits": [torch.full((1, 2, h, w), -10.0) for h, w in shapes],
        "bbox_reg": [torch.ones(1, 4, h, w) for h, w in shapes],
        "centerness": [torch.full((1, 1, h, w), 10.0) for h, w in shapes],
    }
    # Two confident neighbouring locations of class 1 on level 0: (12, 12) and (20, 12), boxes
    # 8 px from the point on each side (stride 8 * 1); IoU of the two boxes = 8*16/(2*256-128) = 1/3.
    preds["cls_logits"][0][0, 1, 1, 1] = 5.0
    preds["cls_logits"][0][0, 1, 1, 2] = 4.0
    preds["bbox_reg"][0][0, :, 1, 1] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    (det,) = model.postprocess(preds, [(30, 30)], (32, 32))
    assert det["labels"].tolist() == [1, 1]
    torch.testing.assert_close(det["boxes"][0], torch.tensor([4.0, 4.0, 20.0, 20.0]))
    # The second box (12, 4, 28, 20) is inside the valid 30x30 region; scores sqrt(p_cls * p_ctr).
    expected = math.sqrt(torch.sigmoid(torch.tensor(5.0)).item() * torch.sigmoid(torch.tensor(10.0)).item())
    assert det["scores"][0].item() == pytest.approx(expected, rel=1e-5)
    # With a stricter NMS the weaker overlapping box goes.
    model.nms_thresh = 0.3
    (det,) = model.postprocess(preds, [(30, 30)], (32, 32))
    assert len(det["boxes"]) == 1


def test_postprocess_clips_to_valid_size():
    model = make_fcos(num_classes=1)
    shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
    preds = {
        "cls_logits": [torch.full((1, 1, h, w), -10.0) for h, w in shapes],
        "bbox_reg": [torch.full((1, 4, h, w), 3.0) for h, w in shapes],
        "centerness": [torch.zeros(1, 1, h, w) for h, w in shapes],
    }
    preds["cls_logits"][0][0, 0, 3, 3] = 5.0  # centre (28, 28), box +-24 px -> (4, 4, 52, 52)
    (det,) = model.postprocess(preds, [(20, 25)], (32, 32))
    torch.testing.assert_close(det["boxes"][0], torch.tensor([4.0, 4.0, 25.0, 20.0]))


def test_wrong_image_shape_is_rejected():
    with pytest.raises(InputError, match="shape"):
        make_fcos().eval()(torch.zeros(3, 32, 32))


def test_bf16_autocast_training_step_is_finite():
    model = make_fcos()
    model.train()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([0])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(torch.randn(1, 3, 64, 64), [(64, 64)], targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_every_batch_makes_the_same_collective_calls(monkeypatch):
    # Under DDP one process may see no positive location while another does; both must make the
    # same reduce_mean calls or the collectives fall out of step.
    import msadkit.modeling.detectors.fcos_losses as fcos_losses_module

    calls = []
    monkeypatch.setattr(fcos_losses_module, "reduce_mean", lambda value: calls.append(1) or value.detach().float())
    model = make_fcos()
    model.train()
    images = torch.randn(1, 3, 64, 64)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    full = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([0])}]
    model(images, [(64, 64)], empty)
    calls_empty = len(calls)
    calls.clear()
    model(images, [(64, 64)], full)
    assert calls_empty == len(calls) == 2


def test_focal_loss_sum_matches_the_one_hot_form():
    from torchvision.ops import sigmoid_focal_loss

    from msadkit.modeling.detectors.fcos_losses import sigmoid_focal_loss_sum

    torch.manual_seed(0)
    logits = (torch.randn(2, 7, 3) * 3).double().requires_grad_()
    labels = torch.tensor([[0, 3, 2, 3, 1, 3, 0], [3, 3, 1, 2, 3, 0, 3]])  # 3 = background
    one_hot = torch.nn.functional.one_hot(labels, 4)[..., :3].double()
    ours = sigmoid_focal_loss_sum(logits, labels)
    reference = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(ours, reference)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    (grad_reference,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_chunked_assignment_equals_whole_batch_assignment(monkeypatch):
    import msadkit.modeling.detectors.fcos_targets as fcos_targets_module

    torch.manual_seed(1)
    locations = compute_locations([(8, 8), (4, 4)], [8, 16])
    targets = []
    for count in (3, 0, 5):
        xy = torch.rand(count, 2) * 40
        wh = torch.rand(count, 2) * 30 + 4
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": torch.randint(0, 3, (count,))})
    whole = assign_fcos_targets(locations, [8, 16], targets, num_classes=3, sizes_of_interest=[(-1, 32), (32, 1e8)])
    monkeypatch.setattr(fcos_targets_module, "ASSIGNMENT_CHUNK_ELEMENTS", 1)
    chunked = assign_fcos_targets(locations, [8, 16], targets, num_classes=3, sizes_of_interest=[(-1, 32), (32, 1e8)])
    assert torch.equal(whole.labels, chunked.labels) and torch.equal(whole.matched_gt, chunked.matched_gt)
    torch.testing.assert_close(whole.reg_targets, chunked.reg_targets, rtol=0, atol=0)
    # Each image is assigned on its own boxes: the empty image is all background.
    assert torch.all(whole.labels[1] == 3)
    single = assign_fcos_targets(locations, [8, 16], targets[2:], num_classes=3, sizes_of_interest=[(-1, 32), (32, 1e8)])
    assert torch.equal(single.labels[0], whole.labels[2])


def test_small_fpn_with_group_norm_evaluates_one_tiny_image():
    # A 32-channel FPN on a 64 px image: P7 is 1x1 and the batch holds one image, so a GroupNorm
    # with one channel per group would have a single value to normalise.
    torch.manual_seed(0)
    head = FCOSHead(in_channels=32, num_classes=2, num_convs=1, norm="GN")
    model = FCOS(backbone=TinyPyramid(32), head=head, num_classes=2).eval()
    (detections,) = model(torch.randn(1, 3, 64, 64))
    assert detections["boxes"].shape[1] == 4
