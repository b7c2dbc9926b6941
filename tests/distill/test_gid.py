import math

import pytest
import torch
from torch import nn

from msadkit.distill.gid.losses import (
    GIDWeights,
    assign_fpn_levels,
    flatten_instances,
    gid_feature_loss,
    gid_relation_loss,
    gid_response_loss,
)
from msadkit.distill.gid.selection import GeneralInstances, gi_scores, select_general_instances

# --------------------------------------------------------------------------------------------------
# Selection


def _scene():
    """One image, 6 locations, 2 classes; GI scores by hand (max over classes of |t - s|):

    loc 0: 0.8, teacher box A              -> kept first
    loc 1: 0.6, box overlapping A (IoU .68) -> suppressed by loc 0
    loc 2: 0.5, far box                     -> kept second
    loc 3: 0.3, far box, student more sure  -> kept third, student box
    loc 4: 0.2, far box, tie of max scores  -> kept fourth, teacher box
    loc 5: 0.0                              -> last
    """
    teacher = torch.tensor(
        [[0.9, 0.1], [0.2, 0.7], [0.6, 0.0], [0.1, 0.2], [0.5, 0.3], [0.4, 0.4]]
    ).unsqueeze(0)
    student = torch.tensor(
        [[0.1, 0.1], [0.2, 0.1], [0.1, 0.0], [0.4, 0.1], [0.5, 0.1], [0.4, 0.4]]
    ).unsqueeze(0)
    teacher_boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [50.0, 50.0, 60.0, 60.0],
            [100.0, 0.0, 110.0, 10.0],
            [0.0, 100.0, 20.0, 120.0],
            [200.0, 200.0, 210.0, 210.0],
        ]
    ).unsqueeze(0)
    student_boxes = teacher_boxes + 1000.0  # distinguishable source
    return teacher, student, teacher_boxes, student_boxes


def test_selection_peaks_suppression_and_box_source():
    teacher, student, teacher_boxes, student_boxes = _scene()
    (gis,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, top_k=10)
    assert gis.indices.tolist() == [0, 2, 3, 4, 5]
    assert gis.scores.tolist() == pytest.approx([0.8, 0.5, 0.3, 0.2, 0.0], abs=1e-6)
    assert gis.from_teacher.tolist() == [True, True, False, True, True]
    assert torch.equal(gis.boxes[0], teacher_boxes[0, 0])
    assert torch.equal(gis.boxes[2], student_boxes[0, 3])  # student's max 0.4 > teacher's 0.2
    assert torch.equal(gis.boxes[3], teacher_boxes[0, 4])  # tie 0.5 == 0.5 goes to the teacher
    assert gis.indices.dtype == torch.int64 and len(gis) == 5


def test_selection_top_k_truncates_and_iou_threshold_matters():
    teacher, student, teacher_boxes, student_boxes = _scene()
    (gis,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, top_k=2)
    assert gis.indices.tolist() == [0, 2]
    assert gis.boxes.shape == (2, 4) and gis.scores.shape == (2,)
    # Boxes 0 and 1 overlap with IoU 81/119 = 0.68: a threshold above that keeps both.
    (loose,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, top_k=2, iou_threshold=0.7)
    assert loose.indices.tolist() == [0, 1]
    (none,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, top_k=0)
    assert len(none) == 0 and none.boxes.shape == (0, 4)


def test_selection_score_modes_differ():
    # loc 0: teacher and student disagree on the class but are equally sure.
    # loc 1: same class, different confidence.
    teacher = torch.tensor([[[0.9, 0.1], [0.5, 0.0]]])
    student = torch.tensor([[[0.1, 0.9], [0.1, 0.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]])
    assert gi_scores(teacher, student)[0].tolist() == pytest.approx([0.8, 0.4])
    assert gi_scores(teacher, student, score_mode="diff_of_max")[0].tolist() == pytest.approx([0.0, 0.4])
    (paper,) = select_general_instances(teacher, student, boxes, boxes, top_k=1)
    (reproduction,) = select_general_instances(teacher, student, boxes, boxes, top_k=1, score_mode="diff_of_max")
    assert paper.indices.tolist() == [0]
    assert reproduction.indices.tolist() == [1]


def test_selection_min_box_size_and_pre_nms_top_k():
    teacher, student, teacher_boxes, student_boxes = _scene()
    teacher_boxes = teacher_boxes.clone()
    teacher_boxes[0, 0] = torch.tensor([0.0, 0.0, 10.0, 2.0])  # height 2
    (gis,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, top_k=3, min_box_size=5.0)
    # loc 0 is dropped, so loc 1 (no longer suppressed by it) comes first.
    assert gis.indices.tolist() == [1, 2, 3]
    (only_best,) = select_general_instances(teacher, student, teacher_boxes, student_boxes, pre_nms_top_k=1)
    assert only_best.indices.tolist() == [0]


def test_selection_per_image_independent_and_no_grad():
    teacher, student, teacher_boxes, student_boxes = _scene()
    teacher2 = torch.cat([teacher, teacher.flip(1)]).requires_grad_(True)
    student2 = torch.cat([student, student.flip(1)])
    tboxes2 = torch.cat([teacher_boxes, teacher_boxes.flip(1)])
    sboxes2 = torch.cat([student_boxes, student_boxes.flip(1)])
    first, second = select_general_instances(teacher2, student2, tboxes2, sboxes2, top_k=3)
    assert first.indices.tolist() == [0, 2, 3]
    assert second.indices.tolist() == [5, 3, 2]  # same boxes in another image are not suppressed
    assert torch.equal(first.boxes, second.boxes)
    assert not first.boxes.requires_grad and not first.scores.requires_grad


def test_selection_shape_errors():
    teacher, student, teacher_boxes, student_boxes = _scene()
    with pytest.raises(ValueError, match="student_scores"):
        select_general_instances(teacher, student[:, :5], teacher_boxes, student_boxes)
    with pytest.raises(ValueError, match="student_boxes"):
        select_general_instances(teacher, student, teacher_boxes, student_boxes[..., :3])
    with pytest.raises(ValueError, match="score_mode"):
        select_general_instances(teacher, student, teacher_boxes, student_boxes, score_mode="max")


# --------------------------------------------------------------------------------------------------
# Level assignment


def test_assign_fpn_levels_known_sizes_and_clamping():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 224.0, 224.0],
            [10.0, 10.0, 122.0, 122.0],
            [0.0, 0.0, 448.0, 448.0],
            [0.0, 0.0, 8.0, 8.0],  # would be level 0
            [0.0, 0.0, 4000.0, 4000.0],  # would be level 8
            [5.0, 5.0, 5.0, 5.0],  # empty box
            [0.0, 0.0, 112.0, 448.0],  # sqrt(area) = 224
            [0.0, 0.0, 400.0, 400.0],  # 4 + log2(400/224) = 4.84, floored
            [0.0, 0.0, 160.0, 160.0],  # 4 + log2(160/224) = 3.51, floored
        ]
    )
    assert assign_fpn_levels(boxes).tolist() == [4, 3, 5, 3, 7, 3, 4, 4, 3]
    assert assign_fpn_levels(boxes, min_level=2, max_level=6).tolist() == [4, 3, 5, 2, 6, 2, 4, 4, 3]
    assert assign_fpn_levels(torch.zeros(0, 4)).shape == (0,)


# --------------------------------------------------------------------------------------------------
# Feature loss


def _constant_pyramid(values, channels, sizes, batch=1):
    return [torch.full((batch, channels, h, w), float(v)) for v, (h, w) in zip(values, sizes)]


STRIDES = [8, 16]
SIZES = [(32, 32), (16, 16)]  # a 256 x 256 image


def test_feature_loss_constant_features_by_hand():
    channels = 3
    teacher = _constant_pyramid([1.0, 2.0], channels, SIZES, batch=2)
    student = [f.clone().zero_().requires_grad_(True) for f in _constant_pyramid([0, 0], channels, SIZES, batch=2)]
    boxes = [
        torch.tensor([[16.0, 16.0, 64.0, 64.0], [100.0, 100.0, 212.0, 212.0]]),  # 48 -> P3, 112 -> P3
        torch.tensor([[8.0, 8.0, 232.0, 232.0]]),  # 224 -> P4
    ]
    loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, boxes, STRIDES, output_size=4)
    # Each GI: sum over C channels and 4x4 cells of t^2, divided by M * 4 * 4; M = 3.
    expected = (channels * 1.0**2 + channels * 1.0**2 + channels * 2.0**2) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert [r.shape for r in teacher_rois] == [(2, channels, 4, 4), (1, channels, 4, 4)]
    assert torch.allclose(teacher_rois[0][0], torch.ones(channels, 4, 4))
    assert torch.allclose(teacher_rois[1][0], torch.full((channels, 4, 4), 2.0))
    assert torch.allclose(student_rois[0], torch.zeros(2, channels, 4, 4))
    loss.backward()
    assert student[0].grad.abs().sum() > 0 and student[1].grad.abs().sum() > 0


def test_feature_loss_adapter_doubles_student():
    teacher = _constant_pyramid([3.0, 3.0], 2, SIZES)
    student = [f.requires_grad_(True) for f in _constant_pyramid([1.0, 1.0], 2, SIZES)]
    boxes = [torch.tensor([[32.0, 32.0, 96.0, 96.0]])]
    plain, _, _ = gid_feature_loss(student, teacher, boxes, STRIDES, output_size=2)
    assert plain.item() == pytest.approx(2 * (3.0 - 1.0) ** 2)

    doubler = nn.Conv2d(2, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        doubler.weight.copy_(2.0 * torch.eye(2).view(2, 2, 1, 1))
    adapted, student_rois, _ = gid_feature_loss(student, teacher, boxes, STRIDES, output_size=2, adapter=doubler)
    assert adapted.item() == pytest.approx(2 * (3.0 - 2.0) ** 2)
    assert torch.allclose(student_rois[0], torch.full((1, 2, 2, 2), 2.0))
    adapted.backward()
    assert doubler.weight.grad is not None and doubler.weight.grad.abs().sum() > 0
    assert student[0].grad.abs().sum() > 0


def test_feature_loss_per_level_adapters_change_channels():
    teacher = _constant_pyramid([1.0, 1.0], 4, SIZES)
    student = [f.requires_grad_(True) for f in _constant_pyramid([1.0, 1.0], 2, SIZES)]
    boxes = [torch.tensor([[0.0, 0.0, 224.0, 224.0]])]  # P4 only
    with pytest.raises(ValueError, match="adapter"):
        gid_feature_loss(student, teacher, boxes, STRIDES)
    adapters = nn.ModuleList([nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)])
    for conv, scale in zip(adapters, (5.0, 0.5)):
        nn.init.constant_(conv.weight, scale / 2)  # sums 2 channels of 1 -> scale
        nn.init.zeros_(conv.bias)
    loss, _, _ = gid_feature_loss(student, teacher, boxes, STRIDES, output_size=3, adapter=list(adapters))
    assert loss.item() == pytest.approx(4 * (1.0 - 0.5) ** 2)
    loss.backward()
    assert adapters[1].weight.grad.abs().sum() > 0
    # The unused level's adapter still gets a (zero) gradient, so distributed training sees it used.
    assert adapters[0].weight.grad is not None and adapters[0].weight.grad.abs().sum() == 0


def test_feature_loss_no_instances_is_zero_with_graph():
    teacher = _constant_pyramid([1.0, 1.0], 2, SIZES, batch=2)
    student = [f.requires_grad_(True) for f in _constant_pyramid([0.0, 0.0], 2, SIZES, batch=2)]
    loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, [torch.zeros(0, 4)] * 2, STRIDES)
    assert loss.item() == 0.0
    loss.backward()
    assert student[0].grad is not None
    assert [r.shape for r in student_rois] == [(0, 2, 10, 10)] * 2
    assert teacher_rois[0].shape == (0, 2, 10, 10)


def test_feature_loss_teacher_gets_no_gradient_and_errors():
    teacher = [f.requires_grad_(True) for f in _constant_pyramid([1.0, 1.0], 2, SIZES)]
    student = [f.requires_grad_(True) for f in _constant_pyramid([0.0, 0.0], 2, SIZES)]
    loss, _, teacher_rois = gid_feature_loss(student, teacher, [torch.tensor([[0.0, 0.0, 50.0, 50.0]])], STRIDES)
    loss.backward()
    assert teacher[0].grad is None and not teacher_rois[0].requires_grad
    with pytest.raises(ValueError, match="strides"):
        gid_feature_loss(student, teacher, [torch.zeros(0, 4)], [8])
    with pytest.raises(ValueError, match="boxes"):
        gid_feature_loss(student, teacher, [torch.zeros(0, 4)] * 2, STRIDES)
    with pytest.raises(ValueError, match="adapter"):
        gid_feature_loss(student, teacher, [torch.zeros(0, 4)], STRIDES, adapter=[nn.Identity()])


# --------------------------------------------------------------------------------------------------
# Relation loss


def _reference_relation(student, teacher, groups):
    """Loop version over pairs: each group normalised by its own mean pairwise distance."""
    total, count = 0.0, 0
    for members in groups:
        if len(members) < 3:
            continue
        pairs = [(i, j) for i in members for j in members if i != j]
        mean_s = sum(torch.dist(student[i], student[j]).item() for i, j in pairs) / len(pairs)
        mean_t = sum(torch.dist(teacher[i], teacher[j]).item() for i, j in pairs) / len(pairs)
        for i, j in pairs:
            normalised_s = torch.dist(student[i], student[j]).item() / mean_s
            normalised_t = torch.dist(teacher[i], teacher[j]).item() / mean_t
            diff = abs(normalised_s - normalised_t)
            total += 0.5 * diff**2 if diff < 1 else diff - 0.5
            count += 1
    return total / count


def test_relation_loss_invariant_to_scale_and_positive_otherwise():
    torch.manual_seed(3)
    teacher = torch.randn(5, 6)
    image_index = torch.tensor([0, 0, 0, 1, 1])
    scaled = (3.5 * teacher).requires_grad_(True)
    zero = gid_relation_loss(scaled, teacher, image_index)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(5, 6, requires_grad=True)
    positive = gid_relation_loss(other, teacher, image_index, per_image=False)
    assert positive.item() > 0.01
    positive.backward()
    assert torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0


def test_relation_loss_matches_pair_loop_in_both_modes():
    torch.manual_seed(4)
    student = torch.randn(7, 5) * 3  # large enough that some differences exceed smooth-L1's beta
    teacher = torch.randn(7, 3)  # the embedding sizes may differ
    image_index = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    per_image = gid_relation_loss(student, teacher, image_index)
    batch = gid_relation_loss(student, teacher, image_index, per_image=False)
    assert per_image.item() == pytest.approx(_reference_relation(student, teacher, [[0, 1, 2], [3, 4, 5, 6]]), rel=1e-5)
    assert batch.item() == pytest.approx(_reference_relation(student, teacher, [list(range(7))]), rel=1e-5)


def test_relation_loss_per_image_and_batch_modes_differ_on_constructed_case():
    # Within each image the student reproduces the teacher's geometry (scaled), but the two
    # images sit at different relative offsets: only the cross-image pairs disagree.
    triangle = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    teacher = torch.cat([triangle, triangle + torch.tensor([10.0, 0.0])])
    student = torch.cat([2 * triangle, 2 * triangle + torch.tensor([1.0, 0.0])])
    image_index = torch.tensor([0, 0, 0, 1, 1, 1])
    assert gid_relation_loss(student, teacher, image_index).item() == pytest.approx(0.0, abs=1e-6)
    assert gid_relation_loss(student, teacher, image_index, per_image=False).item() > 0.1


def test_relation_loss_skips_small_groups():
    torch.manual_seed(5)
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4)
    # Image 1 has 2 instances and is skipped: the loss equals the loss of image 0 alone.
    with_small = gid_relation_loss(student, teacher, torch.tensor([0, 0, 0, 1, 1]))
    alone = gid_relation_loss(student[:3], teacher[:3], torch.tensor([0, 0, 0]))
    assert with_small.item() == pytest.approx(alone.item(), rel=1e-6)
    # No image has 3 instances: zero, graph intact.
    none = gid_relation_loss(student[:4], teacher[:4], torch.tensor([0, 0, 1, 1]))
    assert none.item() == 0.0
    none.backward()
    assert student.grad is not None
    # Fewer than 3 overall in batch mode too.
    assert gid_relation_loss(student[:2], teacher[:2], torch.tensor([0, 1]), per_image=False).item() == 0.0


def test_relation_loss_errors_and_teacher_no_grad():
    with pytest.raises(ValueError, match="image_index"):
        gid_relation_loss(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_embeddings"):
        gid_relation_loss(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    teacher = torch.randn(4, 3, requires_grad=True)
    gid_relation_loss(torch.randn(4, 3, requires_grad=True), teacher, torch.zeros(4, dtype=torch.long)).backward()
    assert teacher.grad is None


def test_flatten_instances_for_relation():
    rois = [torch.ones(2, 3, 2, 2), torch.zeros(0, 3, 2, 2), 2 * torch.ones(1, 3, 2, 2)]
    embeddings, image_index = flatten_instances(rois)
    assert embeddings.shape == (3, 12)
    assert image_index.tolist() == [0, 0, 2]
    assert embeddings[2].tolist() == [2.0] * 12


# --------------------------------------------------------------------------------------------------
# Response loss


def test_response_loss_two_location_hand_case():
    student_cls = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]], requires_grad=True)  # (N=1, R=2, K=2)
    teacher_cls = torch.tensor([[[math.log(3.0), 0.0], [5.0, 5.0]]])  # sigmoid(log 3) = 0.75
    student_reg = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    teacher_reg = torch.tensor([[[1.5, 1.0, 3.0, 6.0], [9.0, 9.0, 9.0, 9.0]]])
    mask = torch.tensor([[True, False]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    losses = gid_response_loss(student_cls, teacher_cls, student_reg, teacher_reg, mask)
    assert set(losses) == {"cls", "reg"}
    assert losses["cls"].item() == pytest.approx(bce(0.0, 0.75) + bce(1.0, 0.5), rel=1e-5)
    assert losses["reg"].item() == pytest.approx(0.5 + 1.0 + 0.0 + 2.0, rel=1e-6)

    both = gid_response_loss(student_cls, teacher_cls, student_reg, teacher_reg, torch.tensor([[True, True]]))
    p5 = 1 / (1 + math.exp(-5.0))
    expected_cls = (bce(0.0, 0.75) + bce(1.0, 0.5) + bce(2.0, p5) + bce(-1.0, p5)) / 2
    assert both["cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert both["reg"].item() == pytest.approx((3.5 + 36.0) / 2, rel=1e-6)

    (losses["cls"] + losses["reg"]).backward()
    assert student_cls.grad[0, 1].abs().sum() == 0 and student_cls.grad[0, 0].abs().sum() > 0
    assert student_reg.grad[0, 0].tolist() == [-1.0, 1.0, 0.0, -1.0]


def test_response_loss_empty_mask_is_zero_with_graph():
    student_cls = torch.randn(2, 3, 4, requires_grad=True)
    losses = gid_response_loss(
        student_cls, torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool)
    )
    assert losses["cls"].item() == 0.0 and losses["reg"].item() == 0.0
    losses["cls"].backward()
    assert student_cls.grad is not None


def test_response_loss_shape_errors():
    cls, reg = torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="mask"):
        gid_response_loss(cls, cls, reg, reg, torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher_cls_logits"):
        gid_response_loss(cls, torch.zeros(1, 2, 5), reg, reg, torch.zeros(1, 2, dtype=torch.bool))


def test_gid_weights_defaults():
    weights = GIDWeights()
    assert (weights.feature, weights.relation, weights.response_cls, weights.response_reg) == (5e-4, 40.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="relation"):
        GIDWeights(relation=-1.0)


def test_selection_feeds_feature_loss_end_to_end():
    """Selected GI boxes go through the feature loss and the loss decreases when the student learns."""
    torch.manual_seed(6)
    num_locations = 20
    teacher_scores = torch.rand(1, num_locations, 3)
    student_scores = torch.rand(1, num_locations, 3)
    corners = torch.rand(1, num_locations, 2) * 150
    sides = 20 + torch.rand(1, num_locations, 2) * 80
    boxes = torch.cat([corners, corners + sides], dim=-1)
    gis = select_general_instances(teacher_scores, student_scores, boxes, boxes, top_k=4)
    assert isinstance(gis[0], GeneralInstances) and len(gis[0]) == 4

    teacher = [torch.randn(1, 2, h, w) for h, w in SIZES]
    student = [torch.zeros(1, 2, h, w, requires_grad=True) for h, w in SIZES]
    optimizer = torch.optim.SGD(student, lr=50.0)
    history = []
    for _ in range(5):
        gi_boxes = [g.boxes for g in gis]
        loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, gi_boxes, STRIDES, output_size=3)
        student_embeddings, image_index = flatten_instances(student_rois)
        teacher_embeddings, _ = flatten_instances(teacher_rois)
        relation = gid_relation_loss(student_embeddings, teacher_embeddings, image_index)
        optimizer.zero_grad()
        (loss + relation).backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]


def test_losses_under_bf16_autocast_are_fp32_and_match():
    torch.manual_seed(7)
    teacher = [torch.randn(1, 2, h, w).to(torch.bfloat16) for h, w in SIZES]
    student = [torch.randn(1, 2, h, w).to(torch.bfloat16).requires_grad_(True) for h, w in SIZES]
    boxes = [torch.tensor([[10.0, 20.0, 90.0, 70.0], [0.0, 0.0, 250.0, 250.0], [40.0, 40.0, 80.0, 80.0]])]
    adapter = nn.Conv2d(2, 2, 1)
    reference, _, _ = gid_feature_loss(
        [s.float() for s in student], [t.float() for t in teacher], boxes, STRIDES, adapter=adapter
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, student_rois, teacher_rois = gid_feature_loss(student, teacher, boxes, STRIDES, adapter=adapter)
        embeddings, image_index = flatten_instances(student_rois)
        relation = gid_relation_loss(embeddings, flatten_instances(teacher_rois)[0], image_index)
        # (N=1, R=2, K=32) logits and (1, 2, 4) box outputs cut from the feature maps
        response = gid_response_loss(
            student[0][:, :, 0], teacher[0][:, :, 0], student[0][:, :, 1, :4], teacher[0][:, :, 1, :4],
            torch.ones(1, 2, dtype=torch.bool),
        )
    assert loss.dtype == relation.dtype == response["cls"].dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    (loss + relation + response["cls"] + response["reg"]).backward()
    assert all(torch.isfinite(s.grad.float()).all() for s in student)


def test_relation_loss_is_exact_for_embeddings_far_from_the_origin():
    """Distances come from differences, not from |x|^2 + |y|^2 - 2xy (torch.cdist's matrix-product
    path for more than 25 rows), which cancels catastrophically in fp32 for ROI features with a large
    common part."""
    torch.manual_seed(0)
    far = 1000.0 + 0.1 * torch.randn(40, 100)
    near = far - 1000.0  # exact in fp32: the same points, moved next to the origin
    image_index = torch.zeros(40, dtype=torch.int64)
    # Same points, same normalised distances: the loss is zero up to rounding (the matrix-product
    # path gives about 0.6 here).
    assert gid_relation_loss(far, near, image_index).item() < 1e-5


@pytest.mark.parametrize("strides", [[], [0, 1], [-8, -16], [12, 24], [8, 32], [8, 16, 48]])
def test_feature_loss_refuses_strides_that_are_not_consecutive_powers_of_two(strides):
    levels = [torch.zeros(1, 2, 4, 4) for _ in strides]
    boxes = [torch.tensor([[0.0, 0.0, 8.0, 8.0]])]
    with pytest.raises(ValueError, match="consecutive powers of two"):
        gid_feature_loss(levels, levels, boxes, strides)


def _bilinear(feature, y, x):
    """``feature (C, H, W)`` at the continuous index ``(y, x)``, as ROIAlign samples (edges clamped)."""
    height, width = feature.shape[-2:]
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(math.floor(y)), height - 1), min(int(math.floor(x)), width - 1)
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    y, x = (float(y0) if y0 == height - 1 else y), (float(x0) if x0 == width - 1 else x)
    ty, tx = y - y0, x - x0
    return (
        (1 - ty) * (1 - tx) * feature[:, y0, x0]
        + (1 - ty) * tx * feature[:, y0, x1]
        + ty * (1 - tx) * feature[:, y1, x0]
        + ty * tx * feature[:, y1, x1]
    )


def _roi_align_by_hand(feature, box, stride, size, ratio=2):
    """ROIAlign with ``aligned=True``: pixel centres at half-integers, ``ratio x ratio`` samples per bin."""
    x1, y1, x2, y2 = (float(v) / stride - 0.5 for v in box)
    bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
    out = torch.zeros(feature.shape[0], size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            for a in range(ratio):
                for b in range(ratio):
                    y = y1 + (i + (a + 0.5) / ratio) * bin_h
                    x = x1 + (j + (b + 0.5) / ratio) * bin_w
                    out[:, i, j] += _bilinear(feature, y, x) / ratio**2
    return out


def test_feature_loss_matches_roi_align_and_fpn_levels_written_out_by_hand():
    """Boxes of 40, 500 and 1000 px go to P4 (clamped up), P5 and P5 (clamped down from P6)."""
    strides = [16, 32]
    sizes = [(64, 64), (32, 32)]
    grid = lambda h, w, power: torch.stack(  # noqa: E731
        [
            (torch.arange(w, dtype=torch.float64).view(1, w) ** power + 0.3 * torch.arange(h, dtype=torch.float64).view(h, 1)).expand(h, w),
            torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w) ** power,
        ]
    )
    teacher = [grid(h, w, 2).unsqueeze(0) for h, w in sizes]
    student = [grid(h, w, 1).unsqueeze(0) * 0.5 for h, w in sizes]
    boxes = [torch.tensor([[100.0, 120.0, 140.0, 160.0], [150.0, 100.0, 650.0, 600.0], [10.0, 10.0, 1010.0, 1000.0]])]
    expected_levels = [0, 1, 1]
    assert assign_fpn_levels(boxes[0], min_level=1, max_level=9).tolist() == [1, 5, 6]
    loss, student_rois, teacher_rois = gid_feature_loss(
        [s.float() for s in student], [t.float() for t in teacher], boxes, strides, output_size=3
    )
    total = 0.0
    for k, level in enumerate(expected_levels):
        t = _roi_align_by_hand(teacher[level][0], boxes[0][k], strides[level], 3)
        s = _roi_align_by_hand(student[level][0], boxes[0][k], strides[level], 3)
        torch.testing.assert_close(teacher_rois[0][k].double(), t, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(student_rois[0][k].double(), s, rtol=1e-4, atol=1e-3)
        total += float(((t - s) ** 2).sum())
    assert loss.item() == pytest.approx(total / (3 * 3 * 3), rel=1e-4)


def test_feature_loss_argument_checks_name_what_is_wrong():
    levels = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    with pytest.raises(ValueError, match="1 student levels, 2 teacher levels and 2 strides"):
        gid_feature_loss(levels[:1], levels, boxes, [8, 16])
    with pytest.raises(ValueError, match="output_size must be >= 1, got 0"):
        gid_feature_loss(levels, levels, boxes, [8, 16], output_size=0)
    loss, rois, _ = gid_feature_loss(levels, levels, boxes, [8, 16], output_size=1)
    assert rois[0].shape == (1, 2, 1, 1) and loss.item() == 0.0
    wide = [torch.zeros(1, 5, 8, 8), torch.zeros(1, 5, 4, 4)]
    narrow = [torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 4)]
    with pytest.raises(ValueError, match="level 3 has 3 student channels and 5 teacher channels"):
        gid_feature_loss(narrow, wide, boxes, [8, 16])


def test_gi_scores_of_both_modes_by_hand():
    teacher = torch.tensor([[[0.9, 0.1, 0.0], [0.2, 0.3, 0.1]]])
    student = torch.tensor([[[0.5, 0.6, 0.0], [0.2, 0.1, 0.7]]])
    # max_c |p_t - p_s|: row 0 max(0.4, 0.5, 0) = 0.5; row 1 max(0, 0.2, 0.6) = 0.6
    torch.testing.assert_close(gi_scores(teacher, student, score_mode="max_abs_diff"), torch.tensor([[0.5, 0.6]]))
    # |max_c p_t - max_c p_s| per location: row 0 |0.9 - 0.6| = 0.3; row 1 |0.3 - 0.7| = 0.4
    torch.testing.assert_close(gi_scores(teacher, student, score_mode="diff_of_max"), torch.tensor([[0.3, 0.4]]))


def test_selection_input_errors_name_the_argument_and_shapes():
    scores = torch.zeros(1, 4, 3)
    boxes = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match=r"teacher_scores and student_scores must both have shape \(N, R, K\), got "
                       r"teacher_scores \(1, 4, 3\) and student_scores \(1, 4, 2\)"):
        select_general_instances(scores, torch.zeros(1, 4, 2), boxes, boxes)
    with pytest.raises(ValueError, match=r"select_general_instances: teacher_boxes must have shape \(N, R, 4\)"):
        select_general_instances(scores, scores, torch.zeros(1, 3, 4), boxes)
    with pytest.raises(ValueError, match=r"select_general_instances: student_boxes must have shape \(N, R, 4\)"):
        select_general_instances(scores, scores, boxes, torch.zeros(1, 4, 5))


def test_fpn_levels_of_one_level_and_of_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 900.0, 900.0]])
    single = assign_fpn_levels(boxes, min_level=4, max_level=4)
    assert single.tolist() == [4, 4] and single.dtype == torch.int64
    # A box without area goes to the lowest level, however long its other side.
    flat = assign_fpn_levels(torch.tensor([[0.0, 0.0, 0.0, 100000.0], [5.0, 0.0, 100005.0, 0.0]]), min_level=3, max_level=7)
    assert flat.tolist() == [3, 3]


def test_relation_loss_is_scale_free_for_small_embeddings_and_checks_its_inputs():
    torch.manual_seed(0)
    teacher = torch.randn(5, 8)
    image_index = torch.zeros(5, dtype=torch.int64)
    # Distances far below 1: normalising by their mean still makes a scaled copy cost nothing.
    assert gid_relation_loss(1e-4 * teacher, teacher, image_index).item() < 1e-6
    with pytest.raises(ValueError, match="embeddings must have shape"):
        gid_relation_loss(torch.zeros(5, 8), torch.zeros(5, 8, 1), image_index)
    with pytest.raises(ValueError, match="student_embeddings has 5 instances but teacher_embeddings has 4"):
        gid_relation_loss(torch.zeros(5, 8), torch.zeros(4, 8), image_index)
