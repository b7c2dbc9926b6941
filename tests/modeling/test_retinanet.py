"""RetinaNet head, assignment, losses and post-processing on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from msadkit.errors import InputError
from msadkit.modeling.detectors.anchors import AnchorGenerator
from msadkit.modeling.detectors.retinanet import BACKGROUND, IGNORE, RetinaNet, match_anchors
from msadkit.modeling.heads.retinanet_head import RetinaNetHead

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)


class FakeBackbone(nn.Module):
    """Strided convs giving ``p3..p7`` at strides 8..128 (ceil division of the input size)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, kernel_size=8, stride=8)
        self.downs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.stem(images))
        features = {"p3": x}
        for name, down in zip(LEVELS[1:], self.downs):
            x = down(torch.relu(x))
            features[name] = x
        return features


def build_model(num_classes: int = 2, **kwargs) -> RetinaNet:
    torch.manual_seed(0)
    head = RetinaNetHead(in_channels=8, num_classes=num_classes, num_convs=1)
    return RetinaNet(backbone=FakeBackbone(8), head=head, num_classes=num_classes, **kwargs)


def build_one_level_model(num_classes: int = 2, stride: int = 4, size: float = 10.0, **kwargs) -> RetinaNet:
    """A detector with one level of square anchors, for predictions written by hand."""
    generator = AnchorGenerator(sizes=((size,),), aspect_ratios=(1.0,), strides=(stride,))
    head = RetinaNetHead(in_channels=4, num_classes=num_classes, num_anchors=1, num_convs=0)
    return RetinaNet(
        backbone=nn.Identity(),
        head=head,
        num_classes=num_classes,
        in_features=("p3",),
        strides=(stride,),
        anchor_generator=generator,
        **kwargs,
    )


def iou(a: list[float], b: list[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def focal_term(logit: float, target: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def smooth_l1(x: float, beta: float) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Head ------------------------------------------------------------------------------------------


def test_head_output_shapes_and_prior_initialisation():
    torch.manual_seed(0)
    head = RetinaNetHead(in_channels=16, num_classes=3, num_anchors=9, norm="GN")
    levels = [torch.randn(2, 16, 6, 5), torch.randn(2, 16, 3, 3)]
    out = head(levels)
    assert [tuple(x.shape) for x in out["cls_logits"]] == [(2, 27, 6, 5), (2, 27, 3, 3)]
    assert [tuple(x.shape) for x in out["bbox_deltas"]] == [(2, 36, 6, 5), (2, 36, 3, 3)]
    assert torch.allclose(head.cls_score.bias, torch.full((27,), -math.log(99.0)))
    assert torch.count_nonzero(head.bbox_pred.bias) == 0
    assert 0.008 < head.cls_subnet[0].weight.std().item() < 0.012
    assert sum(isinstance(m, nn.GroupNorm) for m in head.modules()) == 8
    assert all(isinstance(m, nn.Conv2d) for m in head.cls_subnet if not isinstance(m, (nn.GroupNorm, nn.ReLU)))
    # With the tiny initial weights every anchor starts near the prior probability.
    probs = torch.sigmoid(out["cls_logits"][0])
    assert probs.mean().item() == pytest.approx(0.01, rel=0.1)
    assert (probs - 0.01).abs().max().item() < 5e-3


# Assignment ------------------------------------------------------------------------------------

GT_BOXES = [[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 130.0], [200.0, 0.0, 230.0, 10.0]]
GT_LABELS = [0, 2, 1]
ANCHORS = [
    [0.0, 0.0, 10.0, 10.0],  # IoU 1 with box 0: foreground
    [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 with box 0: foreground
    [0.0, 0.0, 10.0, 22.0],  # IoU 0.4545: ignored
    [0.0, 0.0, 10.0, 30.0],  # IoU 0.333: background
    [50.0, 50.0, 60.0, 60.0],  # overlaps nothing: background
    [100.0, 100.0, 110.0, 110.0],  # IoU 1/3, best anchor of box 1: rescued
    [200.0, 0.0, 210.0, 10.0],  # IoU 1/3 with box 2, tied best: rescued
    [220.0, 0.0, 230.0, 10.0],  # IoU 1/3 with box 2, tied best: rescued
    [210.0, 0.0, 220.0, 5.0],  # IoU 1/6 with box 2: background
]


def test_hand_made_ious_are_what_the_case_claims_and_match_as_claimed():
    # The IoUs come from the independent helper above, not from the package, so the matcher below
    # is checked against the thresholds the case's comments state.
    assert iou(ANCHORS[1], GT_BOXES[0]) == pytest.approx(0.5)
    assert iou(ANCHORS[2], GT_BOXES[0]) == pytest.approx(100 / 220)
    assert iou(ANCHORS[3], GT_BOXES[0]) == pytest.approx(1 / 3)
    assert iou(ANCHORS[5], GT_BOXES[1]) == pytest.approx(1 / 3)
    assert iou(ANCHORS[6], GT_BOXES[2]) == iou(ANCHORS[7], GT_BOXES[2]) == pytest.approx(1 / 3)
    assert iou(ANCHORS[8], GT_BOXES[2]) == pytest.approx(1 / 6)
    ious = torch.tensor([[iou(anchor, box) for anchor in ANCHORS] for box in GT_BOXES], dtype=torch.float64)
    rescued = match_anchors(ious)
    assert rescued.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND, 1, 2, 2, BACKGROUND]
    strict = match_anchors(ious, allow_low_quality_matches=False)
    assert strict.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]
    # Moving the thresholds moves anchor 2 (IoU 0.4545) between ignored and foreground.
    assert match_anchors(ious, thresholds=(0.4, 0.45))[2].item() == 0


def test_assignment_fg_bg_ignore_and_low_quality_rescue():
    model = build_model(num_classes=3)
    anchors = torch.tensor(ANCHORS)
    targets = [
        {"boxes": torch.tensor(GT_BOXES), "labels": torch.tensor(GT_LABELS)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    assignment = model.assign(anchors, targets)
    assert assignment.matched_idxs.tolist()[0] == [0, 0, IGNORE, BACKGROUND, BACKGROUND, 1, 2, 2, BACKGROUND]
    assert assignment.labels.tolist()[0] == [0, 0, -1, 3, 3, 2, 1, 1, 3]
    # The image without boxes is all background.
    assert assignment.matched_idxs.tolist()[1] == [BACKGROUND] * 9
    assert assignment.labels.tolist()[1] == [3] * 9
    expected_boxes = torch.zeros(9, 4)
    for row, box in [(0, 0), (1, 0), (5, 1), (6, 2), (7, 2)]:
        expected_boxes[row] = torch.tensor(GT_BOXES[box])
    assert torch.equal(assignment.matched_boxes[0], expected_boxes)
    assert torch.equal(assignment.matched_boxes[1], torch.zeros(9, 4))
    assert assignment.ignore_mask.tolist()[0] == [False, False, True] + [False] * 6
    assert assignment.fg_mask.sum().item() == 5
    assert assignment.valid_mask.sum().item() == 17


def test_assignment_without_low_quality_matches_leaves_boxes_unmatched():
    model = build_model(num_classes=3, allow_low_quality_matches=False)
    targets = [{"boxes": torch.tensor(GT_BOXES), "labels": torch.tensor(GT_LABELS)}]
    assignment = model.assign(torch.tensor(ANCHORS), targets)
    assert assignment.matched_idxs.tolist()[0] == [0, 0, IGNORE] + [BACKGROUND] * 6


def test_box_overlapping_no_anchor_rescues_nothing():
    iou_matrix = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.6, 0.0]])
    matched = match_anchors(iou_matrix, thresholds=(0.4, 0.5), allow_low_quality_matches=True)
    assert matched.tolist() == [BACKGROUND, 1, BACKGROUND]
    assert match_anchors(torch.zeros(0, 3)).tolist() == [BACKGROUND] * 3


def test_assign_boxes_gives_the_foreground_mask():
    model = build_model(num_classes=3)
    mask = model.assign_boxes(torch.tensor(ANCHORS), torch.tensor(GT_BOXES))
    assert mask.tolist() == [True, True, False, False, False, True, True, True, False]
    assert model.assign_boxes(torch.tensor(ANCHORS), torch.zeros(0, 4)).tolist() == [False] * 9


@pytest.mark.parametrize(
    "target, message",
    [
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([3])}, "labels"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0]]), "labels": torch.tensor([0])}, "boxes"),
        ({"boxes": torch.tensor([[5.0, 0.0, 0.0, 5.0]]), "labels": torch.tensor([0])}, "x2 >= x1"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([0, 1])}, "labels"),
        ({"boxes": torch.tensor([[0.0, 0.0, 5.0, 5.0]])}, "keys"),
    ],
)
def test_malformed_targets_raise_input_error(target, message):
    model = build_model(num_classes=3)
    with pytest.raises(InputError, match=message):
        model.assign(torch.tensor(ANCHORS), [target])


# Losses ----------------------------------------------------------------------------------------

# One level, stride 4, square anchors of size 10 on a 1x3 map:
# (-5,-5,5,5), (-1,-5,9,5), (3,-5,13,5). Against the box (-5,-5,5,5): IoU 1 (foreground),
# 60/140 = 0.43 (ignored), 20/180 = 0.11 (background).
LOGITS = [[0.3, -1.2], [5.0, 5.0], [-0.5, 2.0]]  # per anchor, per class
DELTAS = [[0.05, -0.3, 0.2, 0.0], [3.0, 3.0, 3.0, 3.0], [-2.0, 1.0, 0.5, 0.5]]


def hand_predictions(batch: int = 1) -> dict[str, list[torch.Tensor]]:
    # Channel a*K + k at (y, x): with A = 1 the channels are the classes, x runs over the anchors.
    cls = torch.tensor(LOGITS).t().reshape(1, 2, 1, 3).repeat(batch, 1, 1, 1)
    reg = torch.tensor(DELTAS).t().reshape(1, 4, 1, 3).repeat(batch, 1, 1, 1)
    return {"cls_logits": [cls.requires_grad_()], "bbox_deltas": [reg.requires_grad_()]}


ONE_BOX = {"boxes": torch.tensor([[-5.0, -5.0, 5.0, 5.0]]), "labels": torch.tensor([1])}
NO_BOX = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def test_focal_and_smooth_l1_loss_by_hand():
    model = build_one_level_model()
    losses = model.losses(hand_predictions(), [ONE_BOX], image_shape=(8, 12))
    # Anchor 0 is foreground class 1, anchor 1 ignored, anchor 2 background; one foreground.
    expected_cls = sum(focal_term(x, t) for x, t in zip(LOGITS[0], [0, 1])) + sum(focal_term(x, 0) for x in LOGITS[2])
    expected_box = sum(smooth_l1(d, 0.1) for d in DELTAS[0])  # target deltas are 0: anchor == box
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_box_reg"].item() == pytest.approx(expected_box, rel=1e-5)
    assert expected_box == pytest.approx(0.0125 + 0.25 + 0.15)


def test_stride_override_changes_the_assignment():
    model = build_one_level_model()
    # With stride 8 the anchors are (-5,-5,5,5), (3,-5,13,5), (11,-5,21,5): no anchor is ignored.
    losses = model.losses(hand_predictions(), [ONE_BOX], image_shape=(8, 24), strides=(8,))
    expected_cls = (
        sum(focal_term(x, t) for x, t in zip(LOGITS[0], [0, 1]))
        + sum(focal_term(x, 0) for x in LOGITS[1])
        + sum(focal_term(x, 0) for x in LOGITS[2])
    )
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)


def test_giou_box_loss_by_hand():
    model = build_one_level_model(box_loss="giou")
    predictions = hand_predictions()
    with torch.no_grad():
        predictions["bbox_deltas"][0][0, :, 0, 0] = torch.tensor([0.2, 0.0, 0.0, 0.0])
    losses = model.losses(predictions, [ONE_BOX], image_shape=(8, 12))
    # Decoded box (-3,-5,7,5): IoU 80/120, enclosing box equals the union, GIoU 2/3.
    assert losses["loss_box_reg"].item() == pytest.approx(1 / 3, rel=1e-5)


def test_empty_targets_give_classification_loss_only():
    model = build_one_level_model()
    predictions = hand_predictions()
    losses = model.losses(predictions, [NO_BOX], image_shape=(8, 12))
    expected_cls = sum(focal_term(x, 0) for row in LOGITS for x in row)  # divided by max(1, 0)
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_box_reg"].item() == 0.0
    # The box loss stays attached to the graph so every parameter gets a (zero) gradient.
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert torch.count_nonzero(predictions["bbox_deltas"][0].grad) == 0
    assert torch.count_nonzero(predictions["cls_logits"][0].grad) == 6


def test_foreground_count_is_shared_by_the_batch_and_normalizer_is_overridable():
    model = build_one_level_model()
    losses = model.losses(hand_predictions(batch=2), [ONE_BOX, NO_BOX], image_shape=(8, 12))
    first = sum(focal_term(x, t) for x, t in zip(LOGITS[0], [0, 1])) + sum(focal_term(x, 0) for x in LOGITS[2])
    second = sum(focal_term(x, 0) for row in LOGITS for x in row)
    assert losses["loss_cls"].item() == pytest.approx(first + second, rel=1e-5)

    class FixedNormalizer(RetinaNet):
        def normalizer(self, num_fg: torch.Tensor) -> torch.Tensor:
            return torch.tensor(4.0)

    model.__class__ = FixedNormalizer
    scaled = model.losses(hand_predictions(batch=2), [ONE_BOX, NO_BOX], image_shape=(8, 12))
    assert scaled["loss_cls"].item() == pytest.approx((first + second) / 4, rel=1e-5)
    assert scaled["loss_box_reg"].item() == pytest.approx(losses["loss_box_reg"].item() / 4, rel=1e-5)


def test_loss_decreases_over_sgd_steps_on_one_image():
    model = build_model(num_classes=2)
    model.train()
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 12.0, 44.0, 40.0]]), "labels": torch.tensor([1])}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(30):
        losses = model(images, targets=targets)
        total = losses["loss_cls"] + losses["loss_box_reg"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((losses["loss_cls"].item(), losses["loss_box_reg"].item()))
    assert all(math.isfinite(c) and math.isfinite(b) for c, b in history)
    first_cls, first_box = history[0]
    last_totals = [c + b for c, b in history[-5:]]
    assert sum(last_totals) / 5 < 0.75 * (first_cls + first_box)
    assert history[-1][0] < first_cls
    assert history[-1][1] < 0.25 * first_box


# Post-processing -------------------------------------------------------------------------------

# One level, stride 10, square anchors of size 10 on a 2x3 map; anchor index y*3 + x.


def postprocess_predictions() -> dict[str, list[torch.Tensor]]:
    logits = torch.full((2, 2, 2, 3), -10.0)  # (N, A*K, H, W), K = 2
    deltas = torch.zeros(2, 4, 2, 3)
    logits[:, 1, 1, 1] = 2.0  # anchor (5,5,15,15), class 1, score 0.881
    logits[:, 1, 0, 1] = 1.5  # anchor moved to (5,4,15,14), class 1, score 0.818: suppressed by NMS
    logits[:, 0, 0, 1] = 1.2  # the same box as class 0, score 0.769: kept
    deltas[:, 1, 0, 1] = 0.9
    logits[:, 0, 1, 2] = 1.0  # anchor (15,5,25,15), class 0, score 0.731, clipped
    logits[:, 0, 0, 0] = -3.0  # score 0.047, below the threshold
    return {"cls_logits": [logits], "bbox_deltas": [deltas]}


def test_postprocess_scores_nms_threshold_and_clipping():
    model = build_one_level_model(stride=10)
    results = model.postprocess(postprocess_predictions(), image_sizes=[(18, 22), (18, 12)], image_shape=(20, 30))
    first, second = results
    assert torch.allclose(
        first["boxes"], torch.tensor([[5.0, 5.0, 15.0, 15.0], [5.0, 4.0, 15.0, 14.0], [15.0, 5.0, 22.0, 15.0]])
    )
    assert torch.allclose(first["scores"], torch.tensor([sigmoid(2.0), sigmoid(1.2), sigmoid(1.0)]))
    assert first["labels"].tolist() == [1, 0, 0]
    assert first["boxes"].dtype == torch.float32 and first["labels"].dtype == torch.int64
    # The second image is narrower: boxes clip to width 12 and the third box vanishes.
    assert torch.allclose(second["boxes"], torch.tensor([[5.0, 5.0, 12.0, 15.0], [5.0, 4.0, 12.0, 14.0]]))
    assert second["labels"].tolist() == [1, 0]


def test_postprocess_limits():
    model = build_one_level_model(stride=10, detections_per_image=2)
    (result,) = model.postprocess(
        {k: [v[0][:1]] for k, v in postprocess_predictions().items()}, image_sizes=[(18, 22)], image_shape=(20, 30)
    )
    assert result["labels"].tolist() == [1, 0] and len(result["boxes"]) == 2
    model = build_one_level_model(stride=10, topk_candidates=1)
    (result,) = model.postprocess(
        {k: [v[0][:1]] for k, v in postprocess_predictions().items()}, image_sizes=[(18, 22)], image_shape=(20, 30)
    )
    assert result["scores"].tolist() == pytest.approx([sigmoid(2.0)])
    model = build_one_level_model(stride=10, score_thresh=0.8)
    (result,) = model.postprocess(
        {k: [v[0][:1]] for k, v in postprocess_predictions().items()}, image_sizes=[(18, 22)], image_shape=(20, 30)
    )
    assert result["scores"].tolist() == pytest.approx([sigmoid(2.0)])  # 0.818 one lost to NMS


def test_postprocess_rejects_wrong_number_of_image_sizes():
    model = build_one_level_model(stride=10)
    with pytest.raises(InputError, match="image_sizes"):
        model.postprocess(postprocess_predictions(), image_sizes=[(18, 22)], image_shape=(20, 30))


# End to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_training_and_inference_end_to_end(batch):
    model = build_model(num_classes=2)
    images = torch.randn(batch, 3, 64, 96)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([0])}, NO_BOX][:batch]
    model.train()
    losses = model(images, targets=targets)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert model.backbone.stem.weight.grad is not None
    model.eval()
    model.score_thresh = 0.0  # keep every candidate so the check below sees boxes
    sizes = [(50, 70), (64, 40)][:batch]
    detections = model(images, image_sizes=sizes)
    assert len(detections) == batch
    for det, (h, w) in zip(detections, sizes):
        assert 0 < det["boxes"].shape[0] <= 100
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert (det["boxes"] >= 0).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_bf16_autocast_on_cpu():
    model = build_model(num_classes=2)
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1])}, NO_BOX]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets=targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        detections = model(images)
    assert detections[0]["boxes"].dtype == torch.float32
    assert detections[0]["scores"].dtype == torch.float32


def test_state_dict_holds_only_learned_weights_and_reloads_strictly():
    model = build_model()
    keys = list(model.state_dict())
    assert keys and all(k.startswith(("backbone.", "head.")) for k in keys)
    other = build_model()
    other.load_state_dict(model.state_dict(), strict=True)


def test_constructor_rejects_inconsistent_parts():
    head = RetinaNetHead(in_channels=8, num_classes=2, num_anchors=3, num_convs=0)
    with pytest.raises(ValueError, match="anchors per location"):
        RetinaNet(backbone=FakeBackbone(), head=head, num_classes=2)
    with pytest.raises(ValueError, match="box_loss"):
        build_model(box_loss="l2")
    with pytest.raises(ValueError, match="strides"):
        build_model(anchor_generator=AnchorGenerator(strides=(4, 8, 16, 32, 64)))
