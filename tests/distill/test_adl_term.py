"""The "adl" distillation term on hand-made predictions and tiny detectors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from msadkit.distill.adl import AdaptiveDistillationTerm
from msadkit.distill.distiller import Distiller
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.detectors.anchors import AnchorGenerator, retinanet_anchor_sizes
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.fcos_head import FCOSHead
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from tests.tiny_detectors import TinyPyramid, one_level_retinanet


def tiny_retinanet(channels: int, *, seed: int = 0, base_sizes=(16, 32, 64, 128, 256), strides=(8, 16, 32, 64, 128)):
    torch.manual_seed(seed)
    generator = AnchorGenerator(sizes=retinanet_anchor_sizes(base_sizes), strides=strides)
    head = RetinaNetHead(in_channels=channels, num_classes=3, num_convs=1)
    return RetinaNet(
        backbone=TinyPyramid(channels), head=head, num_classes=3, strides=strides, anchor_generator=generator
    )


def tiny_fcos(channels: int, *, seed: int = 0) -> FCOS:
    torch.manual_seed(seed)
    head = FCOSHead(in_channels=channels, num_classes=3, num_convs=1, norm="")
    return FCOS(backbone=TinyPyramid(channels), head=head, num_classes=3)




def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def reference_adl(rows_s, rows_t, *, alpha=0.5, gamma=2.0, power=1.8) -> float:
    """ADL with beta = 0, written out element by element with the math module."""
    total, normalizer = 0.0, 0.0
    for row_s, row_t in zip(rows_s, rows_t):
        for x, t in zip(row_s, row_t):
            p, q = sigmoid(x), sigmoid(t)
            ce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
            weight = (1 - math.exp(-ce)) ** gamma
            total += -weight * (alpha * q * math.log(p) + (1 - alpha) * (1 - q) * math.log(1 - p))
            normalizer += q**power
    return total / max(normalizer, 1.0)


def test_registered_as_adl():
    assert "adl" in TERMS


def test_retinanet_ignored_anchors_are_left_out():
    # A box equal to the anchor at (0, 0): IoU 1 there; the anchors at (4, 0) and (0, 4) overlap it
    # by 60 / 140 = 0.43, inside the ignore band [0.4, 0.5); the one at (4, 4) by 36 / 164 = 0.22.
    model = one_level_retinanet()
    torch.manual_seed(1)
    student_logits = torch.randn(1, 2, 3, 3) * 2
    teacher_logits = torch.randn(1, 2, 3, 3) * 2
    deltas = torch.zeros(1, 4, 3, 3)
    targets = [{"boxes": torch.tensor([[-5.0, -5.0, 5.0, 5.0]]), "labels": torch.tensor([0])}]
    term = AdaptiveDistillationTerm()
    student = StudentOutputs(model, [], {"cls_logits": [student_logits], "bbox_deltas": [deltas]}, (12, 12))
    teacher = TeacherOutputs([], {"cls_logits": [teacher_logits], "bbox_deltas": [deltas]}, model)
    loss = term(student, teacher, targets, 0)["cls"]

    rows_s = student_logits[0].permute(1, 2, 0).reshape(9, 2).tolist()
    rows_t = teacher_logits[0].permute(1, 2, 0).reshape(9, 2).tolist()
    kept = [i for i in range(9) if i not in (1, 3)]  # row-major: (x=4, y=0) is 1, (x=0, y=4) is 3
    expected = reference_adl([rows_s[i] for i in kept], [rows_t[i] for i in kept])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # With no boxes nothing is ignored and all nine anchors count.
    all_rows = term(student, teacher, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 0)
    assert all_rows["cls"].item() == pytest.approx(reference_adl(rows_s, rows_t), rel=1e-5)
    # The per-image reduction leaves the same ignored anchors out.
    per_image = AdaptiveDistillationTerm(reduction="image")(student, teacher, targets, 0)["cls"]
    assert per_image.item() == pytest.approx(expected, rel=1e-5)


def _fcos_predictions(cls: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    n, _, h, w = cls.shape
    return {"cls_logits": [cls], "bbox_reg": [torch.ones(n, 4, h, w)], "centerness": [torch.zeros(n, 1, h, w)]}


def test_fcos_uses_every_location_and_reductions_differ_as_defined():
    model = FCOS(
        backbone=nn.Identity(),
        head=nn.Identity(),
        num_classes=2,
        in_features=("p3",),
        strides=(8,),
    )
    torch.manual_seed(2)
    student_logits = torch.randn(2, 2, 2, 2) * 2
    teacher_logits = torch.randn(2, 2, 2, 2) * 3 + 1
    student = StudentOutputs(model, [], _fcos_predictions(student_logits), (16, 16))
    teacher = TeacherOutputs([], _fcos_predictions(teacher_logits), model)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([1])}] * 2

    rows = lambda x, i: x[i].permute(1, 2, 0).reshape(4, 2).tolist()  # noqa: E731
    batch = AdaptiveDistillationTerm()(student, teacher, targets, 0)["cls"]
    expected_batch = reference_adl(
        rows(student_logits, 0) + rows(student_logits, 1), rows(teacher_logits, 0) + rows(teacher_logits, 1)
    )
    assert batch.item() == pytest.approx(expected_batch, rel=1e-5)

    per_image = AdaptiveDistillationTerm(reduction="image", alpha=0.3, gamma=1.0)(student, teacher, targets, 0)["cls"]
    expected_image = 0.5 * sum(
        reference_adl(rows(student_logits, i), rows(teacher_logits, i), alpha=0.3, gamma=1.0) for i in range(2)
    )
    assert per_image.item() == pytest.approx(expected_image, rel=1e-5)


def test_distiller_trains_student_only_and_adl_decreases():
    student = tiny_retinanet(8, seed=0)
    teacher = tiny_retinanet(16, seed=1)
    # A confident teacher (q about 0.7 everywhere) that the student, at the prior 0.01, must catch up with.
    nn.init.constant_(teacher.head.cls_score.bias, 1.0)
    term = build_term({"type": "adl", "weight": 2.0}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = distiller(images, None, targets)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_adl_cls"}

    # The distiller applies the weight: the same term with weight 1 gives half.
    with torch.no_grad():
        levels = student.select_levels(student.extract_features(images))
        predictions = student.predict(levels)
        teacher_outputs = teacher.distillation_outputs(images, [(64, 64)] * 2, need_predictions=True)
        unweighted = term(StudentOutputs(student, levels, predictions, (64, 64)), teacher_outputs, targets, 0)["cls"]
    assert losses["loss_adl_cls"].item() == pytest.approx(2.0 * unweighted.item(), rel=1e-5)

    losses["loss_adl_cls"].backward()
    assert student.head.cls_score.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # Box regression is not distilled.
    assert student.head.bbox_pred.weight.grad is None or student.head.bbox_pred.weight.grad.abs().sum() == 0

    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    history = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = distiller(images, None, targets)["loss_adl_cls"]
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < history[0]


def test_grid_mismatch_at_run_time_is_an_input_error():
    teacher = tiny_retinanet(8, seed=1)
    student = tiny_retinanet(8, seed=0)
    student.input_downsample = 2  # p3..p7 of the 0.5x image then hold half the cells: a grid mismatch
    term = build_term({"type": "adl"}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(InputError, match="same feature grids"):
        distiller(torch.randn(1, 3, 64, 64), None, targets)


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        (lambda: tiny_fcos(8), "the student is a RetinaNet and the teacher a FCOS"),
        (lambda: tiny_retinanet(8, base_sizes=(32, 64, 128, 256, 512)), "anchors differ"),
        (lambda: nn.Linear(2, 2), "an 'fcos', 'retinanet' or MSAD teacher"),
    ],
)
def test_mismatched_teacher_is_a_config_error(teacher, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "adl"}, student=tiny_retinanet(8), teacher=teacher())


def test_strides_mismatch_is_a_config_error():
    student = tiny_fcos(8)
    teacher = tiny_fcos(8)
    teacher.strides = (8, 16, 32, 64, 256)
    with pytest.raises(ConfigError, match="strides"):
        build_term({"type": "adl"}, student=student, teacher=teacher)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpah": 0.5}, "unknown option"),
        ({"alpha": 1.5}, "alpha must lie in"),
        ({"gamma": "two"}, "must be a number"),
        ({"reduction": "mean"}, "reduction must be one of"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "adl", **options}, student=tiny_fcos(8), teacher=tiny_fcos(16))


def save_random_teacher(path, name: str, overrides: list[str]):
    """A teacher checkpoint (``{"model", "config"}``) of a freshly built model: enough to run the distiller."""
    from msadkit.config import load_config
    from msadkit.modeling.registry import build_model
    from msadkit.utils.checkpoint import save_atomic

    config = load_config(name, overrides)
    return save_atomic({"model": build_model(config).state_dict(), "config": config}, path)


@pytest.mark.parametrize(
    ("student_config", "teacher_config", "arch", "detector"),
    [
        ("adl/retinanet_adl_demo", "adl/retinanet_teacher_demo", "retinanet", RetinaNet),
        ("adl/fcos_adl_demo", "gid/fcos_teacher_demo", "fcos", FCOS),
    ],
)
def test_adl_distillation_run_through_train(tmp_path, tiny_overrides, student_config, teacher_config, arch, detector):
    from msadkit.config import load_config
    from msadkit.engine.train.metrics_logger import read_metrics
    from msadkit.engine.train.trainer import train
    from msadkit.modeling.registry import build_model
    from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict

    # The teacher is wider (width 0.5, 48 FPN channels) than the student (width 0.25, 32 channels).
    teacher = save_random_teacher(
        tmp_path / "teacher.pth",
        teacher_config,
        tiny_overrides(tmp_path / "teacher", arch=arch) + ["model.fpn.out_channels=48"],
    )
    run = tmp_path / "adl"
    config = load_config(student_config, tiny_overrides(run, arch=arch) + [f"distill.teacher={teacher}"])
    assert train(config) == run
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2]
    assert all(r["loss_adl_cls"] > 0 for r in records)
    assert (run / "eval.json").is_file()
    # The final weights are the student's alone: they load strictly into a plain detector.
    student = build_model(config)
    assert type(student) is detector
    load_state_dict_strict(student, load_checkpoint_file(run / "model_final.pth")["model"], "model_final.pth")
