"""The "crosskd" distillation term (cross-head KD): the losses against a reference written from the
method's description, options, refused pairs, training through a Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from msadkit.distill.distiller import Distiller, freeze
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.anchors import AnchorGenerator, retinanet_anchor_sizes
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.fcos_head import FCOSHead
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from tests.distill.peer_terms_setup import distil_batch
from tests.tiny_detectors import TinyPyramid

SHAPES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]  # a 64 x 64 batch at strides 8..128
STRIDES = (8, 16, 32, 64, 128)
TARGETS = [
    {"boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 62.0, 60.0]]), "labels": torch.tensor([1, 2])},
    {"boxes": torch.tensor([[10.0, 10.0, 26.0, 30.0]]), "labels": torch.tensor([0])},
]


def tiny_fcos(channels=8, *, seed=0, num_convs=4, num_classes=3, levels=("p3", "p4", "p5", "p6", "p7"), downsample=1):
    torch.manual_seed(seed)
    head = FCOSHead(
        in_channels=channels, num_classes=num_classes, num_convs=num_convs, norm="GN", num_levels=len(levels)
    )
    strides = tuple(8 * 2**i for i in range(len(levels)))
    return FCOS(
        backbone=TinyPyramid(channels),
        head=head,
        num_classes=num_classes,
        in_features=levels,
        strides=strides,
        input_downsample=downsample,
    )


def tiny_retinanet(channels=8, *, seed=0, num_convs=4, num_classes=3, aspect_ratios=(0.5, 1.0, 2.0)):
    torch.manual_seed(seed)
    generator = AnchorGenerator(sizes=retinanet_anchor_sizes((16, 32, 64, 128, 256)), aspect_ratios=aspect_ratios)
    head = RetinaNetHead(
        in_channels=channels,
        num_classes=num_classes,
        num_convs=num_convs,
        num_anchors=generator.num_anchors_per_location,
    )
    return RetinaNet(backbone=TinyPyramid(channels), head=head, num_classes=num_classes, anchor_generator=generator)


# Reference: the towers, the statistics alignment, the cross-head predictions and both losses written
# with functional convolutions from the heads' parameters, per channel and per box; no msadkit code.


def _convs(tower):
    layers = list(tower)
    return [
        (layer, layers[i + 1] if isinstance(layers[i + 1], nn.GroupNorm) else None)
        for i, layer in enumerate(layers)
        if isinstance(layer, nn.Conv2d)
    ]


def _ref_tower(convs, x, start, stop, *, relu_last):
    for i in range(start, stop):
        conv, norm = convs[i]
        x = F.conv2d(x, conv.weight, conv.bias, padding=1)
        if norm is not None:
            x = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        if i < stop - 1 or relu_last:
            x = torch.clamp(x, min=0)
    return x


def _sqrt(x):
    """sqrt with the zero sub-gradient at 0 (a channel constant over the batch)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _ref_align(s, t):
    """Per channel: standardise the student's values over images and cells, give them the teacher's."""
    channels = []
    for c in range(s.shape[1]):
        vs, vt = s[:, c], t[:, c]
        n = vs.numel()
        ms, mt = vs.sum() / n, vt.sum() / n
        ss, st = _sqrt(((vs - ms) ** 2).sum() / (n - 1)), _sqrt(((vt - mt) ** 2).sum() / (n - 1))
        channels.append((vs - ms) / (ss + 1e-6) * st + mt)
    return torch.stack(channels, dim=1)


def _ref_predict(head, cls_x, box_x, level, start, fcos):
    cls_convs = _convs(head.cls_tower if fcos else head.cls_subnet)
    box_convs = _convs(head.bbox_tower if fcos else head.bbox_subnet)
    if start > 0:
        cls_x, box_x = torch.clamp(cls_x, min=0), torch.clamp(box_x, min=0)
    cls_x = _ref_tower(cls_convs, cls_x, start, len(cls_convs), relu_last=True)
    box_x = _ref_tower(box_convs, box_x, start, len(box_convs), relu_last=True)
    if fcos:
        logits = F.conv2d(cls_x, head.cls_logits.weight, head.cls_logits.bias, padding=1)
        reg = torch.clamp(head.scales[level].scale * F.conv2d(box_x, head.bbox_pred.weight, None, padding=1), min=0)
        n, k = logits.shape[:2]
        return logits.permute(0, 2, 3, 1).reshape(n, -1, k), reg.permute(0, 2, 3, 1).reshape(n, -1, 4)
    logits = F.conv2d(cls_x, head.cls_score.weight, head.cls_score.bias, padding=1)
    reg = F.conv2d(box_x, head.bbox_pred.weight, head.bbox_pred.bias, padding=1)
    n, _, h, w = logits.shape
    a = head.num_anchors
    logits = logits.reshape(n, a, -1, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, -1)
    return logits, reg.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)


def _ref_predictions(student, teacher, s_maps, t_maps, opts, adapters):
    fcos = isinstance(student, FCOS)
    k = opts["reused_teacher_head_idx"]
    s_head, t_head = student.head, teacher.head
    towers = (lambda h: (h.cls_tower, h.bbox_tower)) if fcos else (lambda h: (h.cls_subnet, h.bbox_subnet))
    cross, target = [], []
    for level, (x, y) in enumerate(zip(s_maps, t_maps)):
        s_cut = [_ref_tower(_convs(tower), x, 0, k, relu_last=False) for tower in towers(s_head)]
        with torch.no_grad():
            t_cut = [_ref_tower(_convs(tower), y, 0, k, relu_last=False) for tower in towers(t_head)]
            target.append(_ref_predict(t_head, y, y, level, 0, fcos))
        if adapters is not None:
            s_cut = [
                torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], m) + conv.bias[None, :, None, None]
                for conv, m in zip(adapters, s_cut)
            ]
        if opts["align_statistics"]:
            s_cut = [_ref_align(m, t) for m, t in zip(s_cut, t_cut)]
        cross.append(_ref_predict(t_head, s_cut[0], s_cut[1], level, k, fcos))
    cat = lambda parts, i: torch.cat([p[i] for p in parts], dim=1)  # noqa: E731
    return cat(cross, 0), cat(cross, 1), cat(target, 0), cat(target, 1)


def _ref_boxes(model, reg):
    """Absolute ``(x1, y1, x2, y2)``: FCOS cell centre -+ ltrb * stride, RetinaNet anchor + deltas."""
    if isinstance(model, FCOS):
        rows = []
        for (h, w), s in zip(SHAPES, STRIDES):
            for i in range(h):
                for j in range(w):
                    rows.append((j * s + s / 2, i * s + s / 2, s))
        cx, cy, s = (torch.tensor(v, dtype=torch.float64) for v in zip(*rows))
        return torch.stack([cx - reg[..., 0] * s, cy - reg[..., 1] * s, cx + reg[..., 2] * s, cy + reg[..., 3] * s], -1)
    anchors = torch.cat(model.anchors(SHAPES)).double()
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    clamp = math.log(1000.0 / 16)
    cx, cy = ax + reg[..., 0] * aw, ay + reg[..., 1] * ah
    w, h = aw * torch.exp(reg[..., 2].clamp(max=clamp)), ah * torch.exp(reg[..., 3].clamp(max=clamp))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _ref_box_loss(p, t, kind):
    iw = (torch.minimum(p[..., 2], t[..., 2]) - torch.maximum(p[..., 0], t[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], t[..., 3]) - torch.maximum(p[..., 1], t[..., 1])).clamp(min=0)
    inter = iw * ih
    eps = 1e-7 if kind == "giou" else 1e-6
    union = (
        (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1]) + (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1]) - inter
    )
    union = union.clamp(min=eps)
    iou = inter / union
    if kind == "iou":
        return -torch.log(iou.clamp(min=eps))
    ew = torch.maximum(p[..., 2], t[..., 2]) - torch.minimum(p[..., 0], t[..., 0])
    eh = torch.maximum(p[..., 3], t[..., 3]) - torch.minimum(p[..., 1], t[..., 1])
    enclosing = (ew * eh).clamp(min=eps)
    return 1 - iou + (enclosing - union) / enclosing


def _ref_crosskd(student, teacher, s_maps, t_maps, predictions, opts, adapters):
    cross_cls, cross_reg, t_cls, t_reg = _ref_predictions(student, teacher, s_maps, t_maps, opts, adapters)
    if isinstance(student, FCOS):
        valid = torch.ones(t_cls.shape[:2], dtype=torch.float64)
        assigned = student.assign(predictions, TARGETS)
        positive_targets = assigned.reg_targets[assigned.labels < student.num_classes].double()
        if opts["normalizer"] == "centerness":
            left, top, right, bottom = positive_targets.unbind(-1)
            horizontal = torch.minimum(left, right) / torch.maximum(left, right)
            norm = torch.sqrt(horizontal * torch.minimum(top, bottom) / torch.maximum(top, bottom)).sum()
        else:
            norm = torch.tensor(float(len(positive_targets)))
    else:
        assignment = student.assign(torch.cat(student.anchors(SHAPES)), TARGETS)
        valid = assignment.valid_mask.double()
        norm = assignment.fg_mask.sum().double().clamp(min=1)
    p, q = torch.sigmoid(cross_cls), torch.sigmoid(t_cls)
    log_p, log_not_p = -F.softplus(-cross_cls), -F.softplus(cross_cls)  # log p, log(1 - p) without saturating
    qfl = -(q * log_p + (1 - q) * log_not_p) * (p - q).abs() ** opts["kd_beta"]
    cls = opts["cls_kd_weight"] * (qfl * valid[..., None]).sum() / norm
    weight = torch.sigmoid(t_cls.max(dim=-1).values) * valid
    box_loss = _ref_box_loss(_ref_boxes(student, cross_reg), _ref_boxes(student, t_reg), opts["reg_kd_loss"])
    reg = opts["reg_kd_weight"] * (weight * box_loss).sum() / norm
    return {"cls": cls, "reg": reg}


OFFICIAL = {
    # configs/crosskd/crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py L55-58 and crosskd_fcos.py
    "fcos": {
        "reused_teacher_head_idx": 2,
        "cls_kd_weight": 0.4,
        "reg_kd_weight": 0.75,
        "reg_kd_loss": "iou",
        "normalizer": "centerness",
    },
    # configs/crosskd/crosskd_r50_retinanet_r101_fpn_2x_coco.py L57-60
    "retinanet": {
        "reused_teacher_head_idx": 3,
        "cls_kd_weight": 1.0,
        "reg_kd_weight": 1.0,
        "reg_kd_loss": "giou",
        "normalizer": "positives",
    },
}


def _randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            std = 0.3 if param.dim() > 1 else 0.2
            param.copy_(torch.randn(param.shape, generator=generator) * std + (1.0 if "scale" in name else 0.0))
    return model.double()


def _setting(arch, options, *, channels=(8, 8)):
    build = tiny_fcos if arch == "fcos" else tiny_retinanet
    student = _randomised(build(channels[0], seed=0), 10)
    teacher = freeze(_randomised(build(channels[1], seed=1), 11))
    term = build_term({"type": "crosskd", **options}, student=student, teacher=teacher).double()
    if term.adapters is not None:
        with torch.no_grad():
            for param in term.adapters.parameters():
                param.normal_(std=0.4, generator=torch.Generator().manual_seed(12))
    generator = torch.Generator().manual_seed(13)
    s_maps = [
        torch.randn(2, channels[0], h, w, generator=generator, dtype=torch.float64).requires_grad_() for h, w in SHAPES
    ]
    t_maps = [
        torch.randn(2, channels[1], h, w, generator=generator, dtype=torch.float64) * 1.5 + 0.3 for h, w in SHAPES
    ]
    predictions = student.predict(s_maps)
    with torch.no_grad():
        t_predictions = teacher.predict(t_maps)
    outputs = StudentOutputs(student, s_maps, predictions, (64, 64)), TeacherOutputs(t_maps, t_predictions, teacher)
    return student, teacher, term, outputs, s_maps, t_maps, predictions


VARIANTS = [
    ("fcos", {}, (8, 8)),
    ("retinanet", {}, (8, 8)),
    ("fcos", {"reused_teacher_head_idx": 0, "align_statistics": False, "kd_beta": 2.0, "reg_kd_loss": "giou"}, (8, 8)),
    ("retinanet", {"reused_teacher_head_idx": 1, "reg_kd_loss": "iou", "channel_adapter": True}, (4, 8)),
    ("fcos", {"reused_teacher_head_idx": 4, "normalizer": "positives", "channel_adapter": True}, (4, 8)),
]


@pytest.mark.parametrize(("arch", "options", "channels"), VARIANTS)
def test_losses_and_gradients_match_the_reference(arch, options, channels):
    student, teacher, term, (s_out, t_out), s_maps, t_maps, predictions = _setting(arch, options, channels=channels)
    opts = {"kd_beta": 1.0, "align_statistics": True, **OFFICIAL[arch], **options}
    got = term(s_out, t_out, TARGETS, 0)
    want = _ref_crosskd(student, teacher, s_maps, t_maps, predictions, opts, term.adapters)
    inputs = list(s_maps) + [p for p in list(student.head.parameters()) + list(term.parameters()) if p.requires_grad]
    # RetinaNet's box coder decodes in float32 (its bf16 outputs decode exactly); differences of
    # float32 coordinates limit the box loss to about 3e-6 of its value and its gradients to about
    # 1e-4 of their scale there (4e-4 elementwise): the bounds leave room for other kernels' rounding.
    for key in ("cls", "reg"):
        float32_box = (arch, key) == ("retinanet", "reg")
        rtol, atol = (2e-3, 3e-4) if float32_box else (1e-6, 1e-8)
        assert want[key].item() > 1e-3, key  # both losses matter in this setting
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-4 if float32_box else 1e-5), key
        got_grads = torch.autograd.grad(got[key], inputs, retain_graph=True, allow_unused=True)
        want_grads = torch.autograd.grad(want[key], inputs, retain_graph=True, allow_unused=True)
        scale = max(w.abs().max().item() for w in want_grads if w is not None)
        for g, w in zip(got_grads, want_grads):
            if w is None:
                assert g is None or not g.any()
            else:
                assert torch.allclose(g, w, rtol=rtol, atol=atol * scale), key
    assert all(p.grad is None for p in teacher.parameters())


def test_registered_with_the_official_defaults_per_detector():
    assert "crosskd" in TERMS
    for arch, build in (("fcos", tiny_fcos), ("retinanet", tiny_retinanet)):
        term = build_term({"type": "crosskd"}, student=build(seed=0), teacher=build(seed=1))
        official = OFFICIAL[arch]
        assert (term.reused_teacher_head_idx, term.cls_kd_weight, term.reg_kd_weight) == (
            official["reused_teacher_head_idx"],
            official["cls_kd_weight"],
            official["reg_kd_weight"],
        )
        assert (term.reg_kd_loss, term.normalizer, term.kd_beta, term.align_statistics) == (
            official["reg_kd_loss"],
            official["normalizer"],
            1.0,
            True,
        )
        assert term.adapters is None and term.name == "loss_crosskd" and term.needs_teacher_predictions


def test_the_kd_weights_scale_their_loss_and_options_are_checked():
    base = _setting("retinanet", {})
    scaled = _setting("retinanet", {"cls_kd_weight": 3.0, "reg_kd_weight": 0.5})
    a = base[2](*base[3], TARGETS, 0)
    b = scaled[2](*scaled[3], TARGETS, 0)
    assert b["cls"].item() == pytest.approx(3 * a["cls"].item(), rel=1e-10)
    assert b["reg"].item() == pytest.approx(0.5 * a["reg"].item(), rel=1e-10)
    student, teacher = tiny_retinanet(seed=0), tiny_retinanet(seed=1)
    cases = [
        ({"reused_idx": 1}, "unknown option.*reused_idx"),
        ({"reg_kd_loss": 1}, "option 'reg_kd_loss' must be a string"),
        ({"align_statistics": "yes"}, "option 'align_statistics' must be a boolean"),
        ({"weight": -0.5}, "weight must be >= 0"),
        ({"cls_kd_weight": -1.0}, "cls_kd_weight must be >= 0"),
        ({"reg_kd_loss": "l1"}, "reg_kd_loss must be one of"),
        ({"normalizer": "images"}, "normalizer must be one of"),
        ({"normalizer": "centerness"}, "normalizer 'centerness' needs an FCOS student"),
        ({"reused_teacher_head_idx": 5}, r"reused_teacher_head_idx must lie in \[0, 4\], got 5"),
        ({"reused_teacher_head_idx": 1.5}, "reused_teacher_head_idx must be an integer"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            build_term({"type": "crosskd", **options}, student=student, teacher=teacher)
        assert "crosskd" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [
        (
            lambda: tiny_fcos(num_convs=2),
            lambda: tiny_fcos(),
            "the student's head has 2 tower convs and the teacher's 4",
        ),
        (
            lambda: tiny_retinanet(num_classes=3),
            lambda: tiny_retinanet(num_classes=4),
            "the student has 3 classes and the teacher 4",
        ),
        (lambda: tiny_retinanet(), lambda: tiny_retinanet(aspect_ratios=(1.0,)), "their anchors differ"),
        (lambda: tiny_fcos(8), lambda: tiny_fcos(16), "set channel_adapter: true"),
        (lambda: tiny_fcos(), lambda: tiny_retinanet(), "the student is a FCOS and the teacher a RetinaNet"),
    ],
)
def test_pairs_with_different_head_layouts_are_refused(student, teacher, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_term({"type": "crosskd"}, student=student(), teacher=teacher())
    assert "crosskd" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("arch", "channels", "options"), [("fcos", (8, 8), {}), ("retinanet", (8, 16), {"channel_adapter": True})]
)
def test_training_step_through_a_distiller(arch, channels, options):
    build = tiny_fcos if arch == "fcos" else tiny_retinanet
    student, teacher = build(channels[0], seed=0), build(channels[1], seed=1)
    images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    losses, term = distil_batch({"type": "crosskd", "weight": 2.0, **options}, student, teacher, images, TARGETS)
    keys = ("loss_crosskd_cls", "loss_crosskd_reg")
    assert set(keys) <= set(losses) and all(torch.isfinite(losses[k]) and losses[k].item() > 0 for k in keys)
    sum(losses[k] for k in keys).backward()
    assert student.backbone.stem.weight.grad.abs().sum() > 0
    assert student.head.cls_logits.weight.grad is None if arch == "fcos" else student.head.cls_score.weight.grad is None
    assert all(p.grad is None for p in teacher.parameters())
    if term.adapters is not None:
        assert all(a.weight.grad.abs().sum() > 0 for a in term.adapters)


def test_low_resolution_student_paired_with_teacher_levels_one_up():
    student = tiny_fcos(8, seed=0, levels=("p3", "p4", "p5", "p6"), downsample=2)
    teacher = tiny_fcos(8, seed=1, levels=("p4", "p5", "p6", "p7"))
    images = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(3))
    losses, _ = distil_batch({"type": "crosskd"}, student, teacher, images, TARGETS)
    assert torch.isfinite(losses["loss_crosskd_cls"]) and torch.isfinite(losses["loss_crosskd_reg"])


def test_bf16_autocast_gives_float32_finite_losses():
    student, teacher = (
        _randomised(tiny_fcos(8, seed=0), 10).float(),
        freeze(_randomised(tiny_fcos(8, seed=1), 11).float()),
    )
    term = build_term({"type": "crosskd"}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = distiller(torch.randn(2, 3, 96, 64), None, TARGETS)
    keys = ("loss_crosskd_cls", "loss_crosskd_reg")
    assert all(losses[k].dtype == torch.float32 and torch.isfinite(losses[k]) and losses[k] > 0 for k in keys)
    sum(losses[k] for k in keys).backward()
    assert torch.isfinite(student.backbone.stem.weight.grad).all()
