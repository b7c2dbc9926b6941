"""The "gid" distillation term: decoding, response masks, adapters, weights, training on tiny detectors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from msadkit.distill.distiller import Distiller
from msadkit.distill.gid.losses import GIDWeights
from msadkit.distill.gid.term import GeneralInstanceDistillationTerm
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.outputs import StudentOutputs
from tests.distill import peer_terms_setup
from tests.distill.peer_terms_setup import tiny_retinanet
from tests.tiny_detectors import one_level_retinanet

KEYS = {"loss_gid_feature", "loss_gid_relation", "loss_gid_response_cls", "loss_gid_response_reg"}



def tiny_fcos(channels: int, *, seed: int = 0) -> FCOS:
    """The shared tiny FCOS with boxes wide enough for GID's selection (tests/test_architecture.py
    draws general instances with it too)."""
    return peer_terms_setup.tiny_fcos(channels, seed=seed, wide_boxes=True)


def one_level_fcos(stride: int = 8) -> FCOS:
    return FCOS(
        backbone=nn.Identity(), head=nn.Identity(), num_classes=2, in_features=("p3",), strides=(stride,)
    )




def test_registered_as_gid():
    assert "gid" in TERMS


def test_fcos_boxes_are_locations_minus_plus_ltrb_times_stride():
    model = one_level_fcos(stride=8)
    # Grid 1 x 2: locations (4, 4) and (12, 4).
    reg = torch.tensor([[1.0, 0.5], [2.0, 0.25], [0.5, 1.0], [1.0, 2.0]]).reshape(1, 4, 1, 2)
    cls = torch.tensor([[0.0, 1.0], [-1.0, 2.0]]).reshape(1, 2, 1, 2)
    ctr = torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2)
    predictions = {"cls_logits": [cls], "bbox_reg": [reg], "centerness": [ctr]}
    out = model.decode_dense(predictions)
    # Location (4, 4), ltrb (1, 2, 0.5, 1) * 8 -> (4 - 8, 4 - 16, 4 + 4, 4 + 8).
    # Location (12, 4), ltrb (0.5, 0.25, 1, 2) * 8 -> (12 - 4, 4 - 2, 12 + 8, 4 + 16).
    assert out.boxes[0].tolist() == [[-4.0, -12.0, 8.0, 12.0], [8.0, 2.0, 20.0, 20.0]]
    sig = torch.sigmoid
    assert torch.allclose(out.scores[0], sig(torch.tensor([[0.0, -1.0], [1.0, 2.0]])))
    with_ctr = model.decode_dense(predictions, with_quality=True)
    expected = sig(torch.tensor([[0.0, -1.0], [1.0, 2.0]])) * sig(torch.tensor([[0.0], [2.0]]))
    assert torch.allclose(with_ctr.scores[0], expected)
    assert out.box_reg.shape == (1, 2, 4) and out.cls_logits.shape == (1, 2, 2)


def test_retinanet_boxes_come_from_the_box_coder_on_the_anchors():
    model = one_level_retinanet()
    deltas = torch.zeros(1, 4, 1, 2)
    deltas[0, 0, 0, 1] = 0.5  # dx of the anchor at (4, 0): shift right by half its width (5 px)
    deltas[0, 2, 0, 1] = float(torch.log(torch.tensor(2.0)))  # and double its width
    predictions = {"cls_logits": [torch.zeros(1, 2, 1, 2)], "bbox_deltas": [deltas]}
    boxes = model.decode_dense(predictions).boxes[0]
    assert torch.allclose(boxes[0], torch.tensor([-5.0, -5.0, 5.0, 5.0]))
    assert torch.allclose(boxes[1], torch.tensor([-1.0, -5.0, 19.0, 5.0]), atol=1e-5)


def test_fcos_response_mask_is_the_centre_region_of_the_gi_box():
    model = one_level_fcos(stride=8)
    # 4 x 4 grid, locations at 4, 12, 20, 28. The box (0, 0, 32, 32) has its centre region
    # 16 +- 1.5 * 8 = (4, 28) (open), which holds x, y in {12, 20}: flat indices 5, 6, 9, 10.
    predictions = {
        "cls_logits": [torch.zeros(2, 2, 4, 4)],
        "bbox_reg": [torch.zeros(2, 4, 4, 4)],
        "centerness": [torch.zeros(2, 1, 4, 4)],
    }
    mask = model.assignment_mask(predictions, [torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.zeros(0, 4)])
    assert mask.shape == (2, 16)
    assert mask[0].nonzero().flatten().tolist() == [5, 6, 9, 10]
    assert not mask[1].any()


def test_retinanet_response_mask_uses_the_anchor_assignment():
    model = one_level_retinanet()
    predictions = {"cls_logits": [torch.zeros(1, 2, 3, 3)], "bbox_deltas": [torch.zeros(1, 4, 3, 3)]}
    # IoU 1 with the anchor at (0, 0); 60 / 140 = 0.43 (ignored, not foreground) with (4, 0) and (0, 4).
    mask = model.assignment_mask(predictions, [torch.tensor([[-5.0, -5.0, 5.0, 5.0]])])
    assert mask[0].nonzero().flatten().tolist() == [0]
    # IoU 100 / 140 = 0.71 with the anchors at (4, 0) and (4, 4), 60 / 180 = 0.33 with the others.
    mask = model.assignment_mask(predictions, [torch.tensor([[-1.0, -5.0, 9.0, 9.0]])])
    assert mask[0].nonzero().flatten().tolist() == [1, 4]


def _student_outputs(model: nn.Module, images: torch.Tensor) -> StudentOutputs:
    levels = model.select_levels(model.extract_features(images))
    return StudentOutputs(model, levels, model.predict(levels), tuple(images.shape[-2:]))


def test_adapters_are_registered_trained_and_losses_carry_their_sub_weights():
    student, teacher = tiny_retinanet(8, seed=0), tiny_retinanet(16, seed=1)
    options = {
        "type": "gid",
        "feature_weight": 0.5,
        "relation_weight": 3.0,
        "response_cls_weight": 0.25,
        "response_reg_weight": 2.0,
    }
    term = build_term(options, student=student, teacher=teacher)
    assert isinstance(term.adapters, nn.ModuleList) and len(term.adapters) == 5
    assert {id(p) for p in term.adapters.parameters()} <= {id(p) for p in term.parameters()}
    assert term.adapters[0].weight.shape == (16, 8, 1, 1)

    unit = GeneralInstanceDistillationTerm(
        student_channels=8, teacher_channels=16, weights=GIDWeights(1.0, 1.0, 1.0, 1.0)
    )
    unit.load_state_dict(term.state_dict())
    images = torch.randn(2, 3, 96, 96)
    teacher_outputs = teacher.distillation_outputs(images, [(96, 96)] * 2, need_predictions=True)
    weighted = term(_student_outputs(student, images), teacher_outputs, [], 0)
    plain = unit(_student_outputs(student, images), teacher_outputs, [], 0)
    assert set(weighted) == {"feature", "relation", "response_cls", "response_reg"}
    for key, factor in (("feature", 0.5), ("relation", 3.0), ("response_cls", 0.25), ("response_reg", 2.0)):
        assert plain[key].item() > 0, key
        assert weighted[key].item() == pytest.approx(factor * plain[key].item(), rel=1e-5)

    sum(weighted.values()).backward()
    assert sum(float(a.weight.grad.abs().sum()) for a in term.adapters if a.weight.grad is not None) > 0
    assert student.head.cls_score.weight.grad.abs().sum() > 0
    assert student.head.bbox_pred.weight.grad.abs().sum() > 0


def test_identical_teacher_gives_zero_feature_relation_and_box_losses():
    student = tiny_fcos(8, seed=0)
    teacher = copy.deepcopy(student)
    term = build_term({"type": "gid", "feature_weight": 1.0}, student=student, teacher=teacher)
    assert term.adapters is None
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        losses = term(
            _student_outputs(student, images),
            teacher.distillation_outputs(images, [(64, 64)] * 2, need_predictions=True),
            [],
            0,
        )
    assert losses["feature"].item() == pytest.approx(0.0, abs=1e-10)
    assert losses["relation"].item() == pytest.approx(0.0, abs=1e-10)
    assert losses["response_reg"].item() == pytest.approx(0.0, abs=1e-10)
    # Matching its own soft labels still costs the entropy of the predictions.
    assert losses["response_cls"].item() > 0


def test_no_general_instances_gives_zero_losses_that_still_backpropagate():
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(16, seed=1)
    term = build_term({"type": "gid", "top_k": 0}, student=student, teacher=teacher)
    images = torch.randn(1, 3, 64, 64)
    losses = term(
        _student_outputs(student, images), teacher.distillation_outputs(images, [(64, 64)], need_predictions=True), [], 0
    )
    assert all(value.item() == 0.0 for value in losses.values())
    sum(losses.values()).backward()
    assert all(a.weight.grad is not None for a in term.adapters)


def test_gid_training_steps_reduce_the_distillation_loss():
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(16, seed=1)
    nn.init.constant_(teacher.head.cls_logits.bias, 0.5)  # a teacher that disagrees with the student
    term = build_term({"type": "gid", "feature_weight": 0.05, "weight": 2.0}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = distiller(images, None, targets)
    assert KEYS <= set(losses)
    optimizer = torch.optim.SGD(distiller.parameters(), lr=0.002)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        losses = distiller(images, None, targets)
        total = sum(value for key, value in losses.items() if key in KEYS)
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert all(torch.isfinite(torch.tensor(history)))
    # The GIs move as the student learns, so single steps may go up; the trend must go down.
    assert max(history[-3:]) < 0.8 * history[0]


def test_mismatched_teacher_and_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="the student is a RetinaNet and the teacher a FCOS"):
        build_term({"type": "gid"}, student=tiny_retinanet(8), teacher=tiny_fcos(8))
    with pytest.raises(ConfigError, match="score_mode must be one of"):
        build_term({"type": "gid", "score_mode": "max"}, student=tiny_fcos(8), teacher=tiny_fcos(8))
    with pytest.raises(ConfigError, match="unknown option"):
        build_term({"type": "gid", "topk": 5}, student=tiny_fcos(8), teacher=tiny_fcos(8))
    with pytest.raises(ConfigError, match="adapter_kernel_size must be 1 or 3"):
        build_term({"type": "gid", "adapter_kernel_size": 2}, student=tiny_fcos(8), teacher=tiny_fcos(4))


@pytest.mark.parametrize(
    ("student_config", "teacher_config", "arch", "keys"),
    [
        ("gid/retinanet_gid_demo", "adl/retinanet_teacher_demo", "retinanet", KEYS),
        ("gid/retinanet_gid_msad_demo", "adl/retinanet_teacher_demo", "retinanet", KEYS | {"loss_msad_feature"}),
        ("gid/fcos_gid_demo", "gid/fcos_teacher_demo", "fcos", KEYS),
    ],
)
def test_gid_distillation_runs_through_train(tmp_path, tiny_overrides, student_config, teacher_config, arch, keys):
    from msadkit.config import load_config
    from msadkit.engine.train.metrics_logger import read_metrics
    from msadkit.engine.train.trainer import train
    from msadkit.modeling.registry import build_model
    from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict, save_atomic

    # A wider teacher FPN (48 channels against the student's 32) makes the term build adapters.
    teacher_cfg = load_config(teacher_config, tiny_overrides(tmp_path / "teacher", arch=arch) + ["model.fpn.out_channels=48"])
    teacher = save_atomic({"model": build_model(teacher_cfg).state_dict(), "config": teacher_cfg}, tmp_path / "t.pth")
    run = tmp_path / "student"
    config = load_config(student_config, tiny_overrides(run, arch=arch) + [f"distill.teacher={teacher}"])
    train(config, evaluate=False)
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 2
    for record in records:
        assert keys <= set(record)
        assert all(isinstance(record[k], float) for k in keys)  # finite (non-finite values are strings)
    # Adapters are part of the training state (checkpointed, resumable) but not of the student.
    state = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert "model.distill_losses.0.adapters.0.weight" in state
    final = load_checkpoint_file(run / "model_final.pth")["model"]
    assert not any("adapters" in key for key in final)
    load_state_dict_strict(build_model(config), final, "model_final.pth")
