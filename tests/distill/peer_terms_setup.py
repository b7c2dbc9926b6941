"""Tiny students, teachers, batches and checks shared by the tests of the distillation terms: the
peer feature terms (fitnet, cwd, pkd, mgd) above all, and fgd, crosskd and gid where they need the
same models or the same distillation step."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from msadkit.distill.distiller import DistillationLoss, Distiller
from msadkit.distill.registry import build_term
from msadkit.modeling.detectors.anchors import AnchorGenerator, retinanet_anchor_sizes
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.fcos_head import FCOSHead
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from tests.tiny_detectors import TinyPyramid

TARGETS = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 56.0]]), "labels": torch.tensor([1])}] * 2


def tiny_fcos(
    channels: int,
    *,
    seed: int = 0,
    levels: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7"),
    input_downsample: int = 1,
    wide_boxes: bool = False,
) -> FCOS:
    """A one-conv FCOS on a :class:`TinyPyramid` of ``channels`` channels, initialised from ``seed``.

    ``wide_boxes``: a freshly initialised head predicts near-empty boxes, which GID's selection
    drops; these weights give boxes a few strides wide, of varied sizes, as after some training.
    """
    torch.manual_seed(seed)
    head = FCOSHead(in_channels=channels, num_classes=3, num_convs=1, norm="", num_levels=len(levels))
    if wide_boxes:
        nn.init.normal_(head.bbox_pred.weight, std=1.0)
        for scale in head.scales:
            nn.init.constant_(scale.scale, 4.0)
    strides = tuple(2 ** int(name[1:]) for name in levels)
    return FCOS(
        backbone=TinyPyramid(channels),
        head=head,
        num_classes=3,
        in_features=levels,
        strides=strides,
        input_downsample=input_downsample,
    )


def tiny_retinanet(channels: int, *, seed: int = 0, num_classes: int = 3) -> RetinaNet:
    torch.manual_seed(seed)
    generator = AnchorGenerator(sizes=retinanet_anchor_sizes((16, 32, 64, 128, 256)))
    head = RetinaNetHead(in_channels=channels, num_classes=num_classes, num_convs=1)
    return RetinaNet(backbone=TinyPyramid(channels), head=head, num_classes=num_classes, anchor_generator=generator)


def tiny_pair(arch: str, student_channels: int = 8, teacher_channels: int = 16) -> tuple[nn.Module, nn.Module]:
    build = tiny_fcos if arch == "fcos" else tiny_retinanet
    return build(student_channels, seed=0), build(teacher_channels, seed=1)


def random_maps(
    channels: int, *, shapes=((4, 5), (2, 3), (2, 2)), batch: int = 2, seed: int = 0, dtype=torch.float64, grad=False
) -> list[torch.Tensor]:
    """One ``(batch, channels, h, w)`` map per ``(h, w)`` in ``shapes``, standard normal with offsets."""
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for level, (h, w) in enumerate(shapes):
        x = torch.randn(batch, channels, h, w, generator=generator, dtype=dtype) * (1 + level) + 0.3 * level
        maps.append(x.requires_grad_(grad))
    return maps


def outputs(student_maps, teacher_maps, *, student_predictions=None, teacher_predictions=None):
    """StudentOutputs / TeacherOutputs holding only maps (and optionally predictions)."""
    student = StudentOutputs(None, list(student_maps), student_predictions, (64, 64))
    teacher = TeacherOutputs(list(teacher_maps), teacher_predictions, None)
    return student, teacher


def distil_batch(
    spec: dict, student: nn.Module, teacher: nn.Module, images: torch.Tensor, targets: list[dict]
) -> tuple[dict[str, torch.Tensor], DistillationLoss]:
    """The losses of one training-mode forward of a Distiller with the term ``spec`` between the two
    models on ``images`` ``(N, 3, H, W)`` and their ``targets``, and the term."""
    term = build_term(spec, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    return distiller(images, None, targets), term


def train_once(arch: str, spec: dict, key: str) -> tuple[DistillationLoss, nn.Module]:
    """One forward of a Distiller with the term ``spec`` on a tiny ``arch`` student (8 channels) and
    teacher (16 channels), and a backward of the term's loss ``key`` alone (so any gradient in the
    student comes from the term): the term and the student, after checking that the loss is finite
    and positive and that its gradient reached the student's first layer."""
    student, teacher = tiny_pair(arch)
    images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    losses, term = distil_batch(spec, student, teacher, images, TARGETS)
    assert {"loss_cls"} <= set(losses) or {"loss_fcos_cls"} <= set(losses)  # the student's own losses stay
    assert torch.isfinite(losses[key]) and losses[key].item() > 0
    losses[key].backward()
    assert reaches_the_student(student)
    return term, student


def reaches_the_student(student: nn.Module) -> bool:
    """The first layer of the student's backbone received a non-zero gradient."""
    grad = student.backbone.stem.weight.grad
    return grad is not None and float(grad.abs().sum()) > 0


def has_gradient(module: nn.Module) -> bool:
    """Every parameter of ``module`` has a gradient and at least one is non-zero."""
    grads = [p.grad for p in module.parameters()]
    return all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def assert_gradients_close(grads, expected, *, rtol: float = 1e-9) -> None:
    """Each gradient within ``rtol`` of the reference, plus an absolute slack of ``rtol * 1e-3`` of
    the largest reference gradient (gradients that are zero in exact arithmetic come out as
    rounding noise, e.g. CWD's adapter biases: a softmax ignores a per-channel shift)."""
    scale = max(float(g.abs().max()) for g in expected)
    assert scale > 0
    for index, (got, want) in enumerate(zip(grads, expected, strict=True)):
        torch.testing.assert_close(
            got, want, rtol=rtol, atol=rtol * 1e-3 * scale, msg=lambda m, index=index: f"gradient {index}: {m}"
        )


def run_against_reference(
    term: nn.Module,
    student_maps: list[torch.Tensor],
    teacher_maps: list[torch.Tensor],
    reference: Callable[[list[torch.Tensor], nn.Module], torch.Tensor],
    *,
    iteration: int = 0,
    allow_unused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """The float64 term's ``""`` loss on the paired maps and the reference's, after checking that the
    loss is float64 and that both have the same gradients (:func:`assert_gradients_close`) with
    respect to the student maps and every parameter of the term.

    Args:
        term: the term, in float64.
        student_maps: ``L`` maps ``(N, Cs, Hi, Wi)`` that require grad.
        teacher_maps: ``L`` maps ``(N, Ct, Hi, Wi)``.
        reference: ``reference(inputs, twin)``, the loss written without the term's code: ``inputs``
            are leaf copies of the student maps, ``twin`` a copy of the term whose parameters are
            leaf copies of the term's (the reference reads its weights and never calls it).
        iteration: the step passed to the term.
        allow_unused: a map or parameter the loss leaves out has no gradient on either side; the
            gradients are then compared as zeros.

    Returns:
        ``(value, expected, grads)``: both losses and the term's gradients (None where unused).
    """
    parameters = list(term.parameters())
    value = term(*outputs(student_maps, teacher_maps), [], iteration)[""]
    grads = torch.autograd.grad(value, list(student_maps) + parameters, allow_unused=allow_unused)
    inputs = [s.detach().clone().requires_grad_(True) for s in student_maps]
    twin = copy.deepcopy(term)
    expected = reference(inputs, twin)
    leaves = inputs + list(twin.parameters())
    expected_grads = torch.autograd.grad(expected, leaves, allow_unused=allow_unused)

    def zeros_where_unused(gradients):
        return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, gradients)]

    assert value.dtype == torch.float64
    assert_gradients_close(zeros_where_unused(grads), zeros_where_unused(expected_grads))
    return value, expected, grads


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a sum over input channels (no conv2d): ``b_o + sum_c W_oc x_nchw``."""
    return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias[None, :, None, None]
