"""MSAD teacher: level pairing, the three-branch loss, inference branches and the distillation view."""

import pytest
import torch

from msadkit.config import load_config
from msadkit.data.batching import collate_detection
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.msad_teacher import MSADTeacher
from msadkit.modeling.registry import build_model

TINY = [
    "model.fpn.out_channels=32",
    "model.fcos.num_convs=1",
    "model.num_classes=3",
]


def tiny_teacher(*overrides: str) -> MSADTeacher:
    torch.manual_seed(0)
    return build_model(load_config("msad/msad_teacher_demo", [*TINY, *overrides]))


def low_res_levels(model: MSADTeacher, images: torch.Tensor) -> list[torch.Tensor]:
    # Written out here instead of calling the teacher: 2x nearest subsampling, then p2..p6.
    features = model.detector.backbone(images[:, :, ::2, ::2])
    return [features[name] for name in ("p2", "p3", "p4", "p5", "p6")]


def high_res_levels(model: MSADTeacher, images: torch.Tensor) -> list[torch.Tensor]:
    features = model.detector.backbone(images)
    return [features[name] for name in ("p3", "p4", "p5", "p6", "p7")]


def fused_by_hand(model: MSADTeacher, high: list[torch.Tensor], low: list[torch.Tensor]) -> list[torch.Tensor]:
    fused = []
    for h, lo in zip(high, low):
        pooled = torch.cat([h, lo], dim=1).mean(dim=(2, 3))
        weights = torch.softmax(model.fusion.score(torch.relu(model.fusion.squeeze(pooled))), dim=1)
        fused.append(weights[:, 0, None, None, None] * h + weights[:, 1, None, None, None] * lo)
    return fused


@pytest.fixture(scope="module")
def teacher():
    return tiny_teacher()


def odd_batch():
    torch.manual_seed(1)
    samples = [
        (torch.randn(3, 300, 430), {}),
        (torch.randn(3, 210, 256), {}),
    ]
    return collate_detection(samples, size_divisibility=256)


def test_levels_pair_and_align_for_odd_image_sizes(teacher):
    batch = odd_batch()
    assert tuple(batch.images.shape) == (2, 3, 512, 512)
    teacher.eval()
    out = teacher.branch_features(batch.images)
    assert set(out) == {"high", "low", "fused", "weights"}
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        expected = (2, 32, 512 // stride, 512 // stride)
        assert tuple(out["high"][level].shape) == expected
        assert tuple(out["low"][level].shape) == expected
        assert tuple(out["fused"][level].shape) == expected
    # Low-res p_l comes from the 0.5x nearest copy, high-res p_(l+1) from the image itself.
    with torch.no_grad():
        for mine, ref in zip(out["low"], low_res_levels(teacher, batch.images)):
            torch.testing.assert_close(mine, ref)
        for mine, ref in zip(out["high"], high_res_levels(teacher, batch.images)):
            torch.testing.assert_close(mine, ref)
        by_hand = fused_by_hand(teacher, out["high"], out["low"])
        for mine, ref, high, low in zip(out["fused"], by_hand, out["high"], out["low"]):
            # w_h * high + w_l * low cancels where the two differ in sign: its rounding is relative
            # to the inputs' scale (up to ~300 here), not to the (possibly small) result.
            scale = float(torch.maximum(high.abs().max(), low.abs().max()))
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=8 * torch.finfo(torch.float32).eps * scale)
    assert tuple(out["weights"].shape) == (2, 5, 2)
    torch.testing.assert_close(out["weights"].sum(-1), torch.ones(2, 5))
    assert not out["fused"][0].requires_grad


def test_unpadded_batch_and_config_are_refused(teacher):
    with pytest.raises(ConfigError, match="data.size_divisibility=256"):
        teacher.branch_features(torch.zeros(1, 3, 300, 430))
    with pytest.raises(ConfigError, match="data.size_divisibility=256"):
        teacher.eval()(torch.zeros(1, 3, 256, 288))
    with pytest.raises(ConfigError, match="data.size_divisibility"):
        tiny_teacher("data.size_divisibility=32")
    with pytest.raises(ConfigError, match="eval_branch"):
        tiny_teacher("model.msad.eval_branch=both")


def test_training_loss_is_high_plus_low_plus_weighted_fused():
    model = tiny_teacher("model.backbone.norm=GN", "model.msad.fused_loss_weight=0.3").train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 256, 256)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 40.0, 44.0], [60.0, 50.0, 200.0, 230.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[100.0, 30.0, 180.0, 90.0]]), "labels": torch.tensor([1])},
    ]
    losses = model(images, None, targets)
    prefixes = {key.split("_", 1)[0] for key in losses}
    assert prefixes == {"high", "low", "fused"}

    # Each branch scored independently with the plain FCOS loss, HR strides and HR ground truth.
    detector = model.detector
    high = high_res_levels(model, images)
    low = low_res_levels(model, images)
    fused = fused_by_hand(model, high, low)
    expected = {}
    for name, levels, weight in (("high", high, 1.0), ("low", low, 1.0), ("fused", fused, 0.3)):
        branch = detector.losses(detector.predict(levels), targets, (256, 256), strides=(8, 16, 32, 64, 128))
        for key, value in branch.items():
            expected[f"{name}_{key}"] = weight * value
    assert set(losses) == set(expected)
    for key in expected:
        torch.testing.assert_close(losses[key], expected[key], rtol=1e-4, atol=1e-6)
    total = sum(losses.values())
    torch.testing.assert_close(total, sum(expected.values()), rtol=1e-4, atol=1e-6)
    # The fused term trains the fusion gate; all branches train the one shared head.
    total.backward()
    assert model.fusion.squeeze.weight.grad is not None and model.fusion.squeeze.weight.grad.abs().sum() > 0
    assert model.detector.head.cls_logits.weight.grad.abs().sum() > 0


def test_one_backbone_one_head_one_fusion_in_the_state_dict(teacher):
    keys = list(teacher.state_dict())
    assert all(key.startswith(("detector.", "fusion.")) for key in keys)
    assert any(key.startswith("detector.backbone.fpn.output_convs.p2") for key in keys)  # used by the low branch
    assert any(key.startswith("detector.backbone.fpn.p7") for key in keys)  # used by the high branch
    assert teacher.backbone is teacher.detector.backbone
    assert sum(p.numel() for p in teacher.parameters()) == sum(
        p.numel() for p in teacher.detector.parameters()
    ) + sum(p.numel() for p in teacher.fusion.parameters())


@pytest.fixture(scope="module")
def scoring_teacher():
    # A score threshold of 0 makes the untrained head return detections to compare.
    return tiny_teacher("model.fcos.score_thresh=0.0", "model.fcos.detections_per_image=20").eval()


@pytest.mark.parametrize("branch", ["fused", "high", "low"])
def test_eval_branch_decodes_its_own_pyramid(scoring_teacher, branch):
    model = scoring_teacher
    model.eval_branch = branch
    torch.manual_seed(3)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        detections = model(images, [(250, 256)])
        high, low = high_res_levels(model, images), low_res_levels(model, images)
        levels = {"high": high, "low": low, "fused": fused_by_hand(model, high, low)}[branch]
        reference = model.detector.postprocess(model.detector.predict(levels), [(250, 256)], (256, 256))
    model.eval_branch = "fused"
    assert len(detections) == 1 and len(detections[0]["boxes"]) == 20
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(detections[0][key], reference[0][key], rtol=1e-4, atol=1e-4)
    assert float(detections[0]["boxes"][:, 3].max()) <= 250.0


def test_branches_differ_and_default_is_fused(scoring_teacher):
    assert scoring_teacher.eval_branch == "fused"
    torch.manual_seed(3)
    images = torch.randn(1, 3, 256, 256)
    scores = {}
    with torch.no_grad():
        for branch in ("high", "low"):
            scoring_teacher.eval_branch = branch
            scores[branch] = scoring_teacher(images)[0]["scores"]
    scoring_teacher.eval_branch = "fused"
    assert not torch.allclose(scores["high"], scores["low"])


def test_batched_inference_matches_one_image_at_a_time(scoring_teacher):
    batch = collate_detection(
        [(torch.randn(3, 256, 200), {}), (torch.randn(3, 180, 256), {})], size_divisibility=256
    )
    with torch.no_grad():
        together = scoring_teacher(batch.images, batch.image_sizes)
        alone = [scoring_teacher(batch.images[i : i + 1], [batch.image_sizes[i]])[0] for i in range(2)]
    assert len(together) == 2
    for joint, single in zip(together, alone):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(joint[key], single[key], rtol=1e-4, atol=1e-4)
    assert not torch.equal(together[0]["scores"], together[1]["scores"])


def test_distillation_outputs_hand_out_the_fused_pyramid(teacher):
    teacher.eval()
    torch.manual_seed(4)
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        out = teacher.distillation_outputs(images, [(256, 256)] * 2, need_predictions=False)
        with_head = teacher.distillation_outputs(images, [(256, 256)] * 2, need_predictions=True)
        reference = teacher.branch_features(images)
    assert out.predictions is None and out.model is teacher.detector
    for mine, ref in zip(out.levels, reference["fused"]):
        torch.testing.assert_close(mine, ref)
    assert tuple(out.extras["fusion_weights"].shape) == (2, 5, 2)
    assert len(out.extras["high_levels"]) == len(out.extras["low_levels"]) == 5
    logits = with_head.predictions["cls_logits"]
    assert [tuple(x.shape[-2:]) for x in logits] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    torch.testing.assert_close(logits[0], teacher.detector.head(reference["fused"])["cls_logits"][0])


def test_flops_inputs_follow_the_eval_branch(teacher):
    images = torch.zeros(1, 3, 256, 512)
    shapes = [tuple(x.shape) for x in teacher.bottom_up_inputs(images)]
    assert shapes == [(1, 3, 256, 512), (1, 3, 128, 256)]
    outputs = teacher.flops_forward(images)
    assert len(outputs) == 15  # cls, box and centerness maps of five levels
    teacher.eval_branch = "low"
    try:
        assert [tuple(x.shape) for x in teacher.bottom_up_inputs(images)] == [(1, 3, 128, 256)]
    finally:
        teacher.eval_branch = "fused"


def test_branch_losses_use_the_detectors_focal_and_giou_settings():
    """Non-default focal alpha/gamma and GIoU smoothing reach all three branches' losses."""
    settings = ["model.fcos.focal_alpha=0.4", "model.fcos.focal_gamma=1.5", "model.fcos.giou_smoothing=1.0"]
    model = tiny_teacher("model.backbone.norm=GN", *settings).train()
    torch.manual_seed(2)
    images = torch.randn(1, 3, 256, 256)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 40.0, 44.0], [60.0, 50.0, 200.0, 230.0]]), "labels": torch.tensor([0, 2])}]
    losses = model(images, None, targets)
    detector = model.detector
    assert (detector.focal_alpha, detector.focal_gamma, detector.giou_smoothing) == (0.4, 1.5, 1.0)
    high = high_res_levels(model, images)
    low = low_res_levels(model, images)
    for name, levels in (("high", high), ("low", low), ("fused", fused_by_hand(model, high, low))):
        branch = detector.losses(detector.predict(levels), targets, (256, 256), strides=(8, 16, 32, 64, 128))
        weight = model.fused_loss_weight if name == "fused" else 1.0
        for key, value in branch.items():
            torch.testing.assert_close(losses[f"{name}_{key}"], weight * value, rtol=1e-4, atol=1e-6)
    # The same weights with the default settings give other classification and box losses.
    default = tiny_teacher("model.backbone.norm=GN").train()
    default.load_state_dict(model.state_dict())
    plain = default(images, None, targets)
    for key in ("high_loss_fcos_cls", "high_loss_fcos_loc", "fused_loss_fcos_cls", "low_loss_fcos_loc"):
        assert abs(plain[key].item() - losses[key].item()) > 1e-4 * abs(plain[key].item()), key


def test_inference_without_image_sizes_uses_the_whole_non_square_batch(scoring_teacher):
    torch.manual_seed(6)
    images = torch.randn(2, 3, 256, 512)
    with torch.no_grad():
        detections = scoring_teacher(images)
        high, low = high_res_levels(scoring_teacher, images), low_res_levels(scoring_teacher, images)
        levels = fused_by_hand(scoring_teacher, high, low)
        reference = scoring_teacher.detector.postprocess(
            scoring_teacher.detector.predict(levels), [(256, 512)] * 2, (256, 512)
        )
    assert len(detections) == 2
    for found, expected in zip(detections, reference):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-4)
    # Some boxes reach past x = 256: the width is the batch's 512, not its height.
    assert max(float(d["boxes"][:, 2].max()) for d in detections) > 256.0
