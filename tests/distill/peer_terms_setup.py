"""Tiny students, teachers and batches shared by the tests of the peer feature terms
(fitnet, cwd, pkd, mgd)."""

from __future__ import annotations

import torch
from torch import nn

from msadkit.distill.distiller import Distiller
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
    channels: int, *, seed: int = 0, levels: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7"), input_downsample: int = 1
) -> FCOS:
    torch.manual_seed(seed)
    head = FCOSHead(in_channels=channels, num_classes=3, num_convs=1, norm="")
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


def train_once(arch: str, spec: dict, key: str) -> tuple[dict[str, torch.Tensor], nn.Module, nn.Module]:
    """One forward of a Distiller with the term ``spec`` on a tiny ``arch`` student (8 channels) and
    teacher (16 channels), and a backward of the term's loss ``key`` alone (so any gradient in the
    student comes from the term): the losses, the term and the student."""
    student, teacher = tiny_pair(arch)
    term = build_term(spec, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    losses = distiller(images, None, TARGETS)
    assert {"loss_cls"} <= set(losses) or {"loss_fcos_cls"} <= set(losses)  # the student's own losses stay
    losses[key].backward()
    return losses, term, student


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


def adapter_copies(adapters: nn.ModuleList) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Leaf copies ``(weight, bias)`` of each 1x1 adapter, for a reference that needs their gradients."""
    return [
        (a.weight.detach().clone().requires_grad_(True), a.bias.detach().clone().requires_grad_(True))
        for a in adapters
    ]


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a sum over input channels (no conv2d): ``b_o + sum_c W_oc x_nchw``."""
    return torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias[None, :, None, None]
