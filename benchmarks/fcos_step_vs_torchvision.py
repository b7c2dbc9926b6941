"""One FCOS training step, msadkit against torchvision, on the same ResNet-50-FPN and the same batch.

A step is forward + loss + backward + SGD step. Both detectors are built as alike as their code
allows:

- bottom-up: torchvision's ResNet-50. ``--backbone frozen`` (default) is how torchvision trains
  FCOS from an ImageNet backbone: every BN a FrozenBatchNorm2d, stem and res2 frozen (three
  trainable stages). ``--backbone bn`` is ``fcos_resnet50_fpn(weights=None,
  weights_backbone=None)`` taken literally: trainable BatchNorm, every stage trainable.
- FPN: P3..P5 with P6/P7 from P5, 256 channels (msadkit ``model.fpn.top_block=p5``).
- head: 4+4 tower convs with GroupNorm(32), the same K classes (torchvision's tower convs carry
  a bias, 1024 extra parameters in all).
- input: the same ``N x 3 x S x S`` batch in [0, 1] and the same boxes. torchvision normalises
  and "resizes" inside its transform, so it gets ``min_size = max_size = S`` (scale 1: no size
  change) and msadkit's step includes the same normalisation.

Prints the per-round times, then the profile of one step of each (where the time goes, and the
share of target assignment and loss), then the ratio msadkit / torchvision.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

import msadkit.modeling.detectors.fcos as fcos_module
from benchmarks.common import (
    add_common_arguments,
    interleaved_times,
    median_ms,
    ratio_summary,
    start_benchmark,
    synthetic_boxes,
    target_verdict,
    timed_rounds,
)
from msadkit.config import load_config
from msadkit.modeling.detectors.fcos_losses import fcos_losses
from msadkit.modeling.detectors.fcos_targets import assign_fcos_targets, compute_locations
from msadkit.modeling.registry import build_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGET_RATIO = 0.8


def build_ours(num_classes: int, backbone: str) -> nn.Module:
    overrides = [
        "model.backbone.name=resnet50",
        f"model.backbone.norm={'FrozenBN' if backbone == 'frozen' else 'BN'}",
        f"model.backbone.freeze_at={2 if backbone == 'frozen' else 0}",
        "model.fpn.out_channels=256",
        "model.fpn.top_block=p5",
        f"model.num_classes={num_classes}",
    ]
    return build_model(load_config("fcos_demo", overrides)).train()


def _freeze_like_pretrained(model: nn.Module) -> None:
    """What ``fcos_resnet50_fpn`` does when given ImageNet weights: FrozenBN, stem and res2 frozen."""
    body = model.backbone.body

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = TorchvisionFrozenBN(child.num_features, eps=child.eps)
                frozen.weight.copy_(child.weight.detach())
                frozen.bias.copy_(child.bias.detach())
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
                setattr(module, name, frozen)
            else:
                replace(child)

    with torch.no_grad():
        replace(body)
    trainable = ("layer2", "layer3", "layer4")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(name.startswith(trainable))


def build_torchvision(num_classes: int, size: int, backbone: str) -> nn.Module:
    model = fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )
    if backbone == "frozen":
        _freeze_like_pretrained(model)
    return model.train()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_steps(
    ours: nn.Module, torchvision_model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
) -> dict[str, Callable[[], None]]:
    """One training step of each model on the same batch."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
    ours_optimizer = torch.optim.SGD(trainable_parameters(ours), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    tv_optimizer = torch.optim.SGD(
        trainable_parameters(torchvision_model), lr=1e-4, momentum=0.9, weight_decay=1e-4
    )
    image_list = list(images)

    def ours_step() -> None:
        losses = ours((images - mean) / std, image_sizes, targets)
        ours_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        ours_optimizer.step()

    def torchvision_step() -> None:
        losses = torchvision_model(image_list, targets)
        tv_optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        tv_optimizer.step()

    return {"msadkit": ours_step, "torchvision": torchvision_step}


@contextlib.contextmanager
def labelled_regions(ours: nn.Module, torchvision_model: nn.Module) -> Iterator[None]:
    """Wrap assignment, loss and the whole forward of both models in profiler labels."""

    def wrap(function: Callable, label: str) -> Callable:
        def wrapped(*args, **kwargs):
            with record_function(label):
                return function(*args, **kwargs)

        return wrapped

    original_losses = fcos_module.fcos_losses
    transform = torchvision_model.transform
    # Instance attributes shadow the methods; deleting them restores the class methods.
    ours.assign = wrap(ours.assign, "msadkit: target assignment")
    fcos_module.fcos_losses = wrap(original_losses, "msadkit: loss (forward)")
    torchvision_model.compute_loss = wrap(torchvision_model.compute_loss, "torchvision: assignment + loss (forward)")
    transform.forward = wrap(transform.forward, "torchvision: transform (normalise, resize, batch)")
    try:
        yield
    finally:
        del ours.assign
        fcos_module.fcos_losses = original_losses
        del torchvision_model.compute_loss
        del transform.forward


def profile_steps(steps: dict[str, Callable[[], None]], ours: nn.Module, torchvision_model: nn.Module) -> None:
    """Profile one step of each contender and print the labelled regions and the top operators."""
    with labelled_regions(ours, torchvision_model):
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function(f"{name}: whole step"):
                    step()
            events = prof.key_averages()
            total = next(e.cpu_time_total for e in events if e.key == f"{name}: whole step")
            print(f"-- profile of one {name} step ({total / 1e3:.0f} ms under the profiler)")
            for event in events:
                if event.key.startswith(f"{name}:") and not event.key.endswith("whole step"):
                    print(f"   {event.key:<52} {event.cpu_time_total / 1e3:8.1f} ms  {100 * event.cpu_time_total / total:5.1f} %")
            top = sorted(
                (e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total, reverse=True
            )[:6]
            for event in top:
                print(f"   {event.key:<52} {event.self_cpu_time_total / 1e3:8.1f} ms  {100 * event.self_cpu_time_total / total:5.1f} % (self)")


def make_loss_contenders(
    torchvision_model: nn.Module, *, batch: int, height: int, width: int, boxes: int, num_classes: int
) -> dict[str, Callable[[], None]]:
    """Target assignment + the three losses, forward and backward, on random head outputs.

    Both sides get the same ``(N, R, K)`` logits, ``(N, R, 4)`` regression and ``(N, R)``
    centerness leaves and the same boxes; torchvision's part is ``FCOS.compute_loss`` (matching
    and ``FCOSHead.compute_loss``) with the anchors its own generator makes.
    """
    strides = (8, 16, 32, 64, 128)
    shapes = [(-(-height // s), -(-width // s)) for s in strides]
    num_locations = sum(h * w for h, w in shapes)
    generator = torch.Generator().manual_seed(2)
    cls_logits = (torch.randn(batch, num_locations, num_classes, generator=generator) - 4.0).requires_grad_()
    bbox_reg = torch.rand(batch, num_locations, 4, generator=generator).mul(4).requires_grad_()
    centerness = torch.randn(batch, num_locations, generator=generator).requires_grad_()
    targets = synthetic_boxes(batch, height, width, boxes, num_classes, seed=3)
    locations = compute_locations(shapes, strides)

    image_list = ImageList(torch.zeros(batch, 3, height, width), [(height, width)] * batch)
    feature_stand_ins = [torch.zeros(batch, 1, h, w) for h, w in shapes]
    anchors = torchvision_model.anchor_generator(image_list, feature_stand_ins)
    per_level = [h * w for h, w in shapes]

    def ours() -> None:
        assigned = assign_fcos_targets(locations, strides, targets, num_classes)
        losses = fcos_losses(cls_logits, bbox_reg, centerness, assigned)
        torch.autograd.grad(sum(losses.values()), (cls_logits, bbox_reg, centerness))

    def theirs() -> None:
        # torchvision regresses in stride units through its box coder; the values do not matter here.
        head_outputs = {
            "cls_logits": cls_logits,
            "bbox_regression": bbox_reg,
            "bbox_ctrness": centerness.unsqueeze(-1),
        }
        losses = torchvision_model.compute_loss(targets, head_outputs, anchors, per_level)
        torch.autograd.grad(sum(losses.values()), (cls_logits, bbox_reg, centerness))

    print(
        f"-- assignment + loss alone: {batch} x {height} x {width} ({num_locations} locations), "
        f"{boxes} boxes per image, K={num_classes}"
    )
    return {"msadkit": ours, "torchvision": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="square input side, a multiple of 128")
    parser.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image")
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--backbone", choices=("frozen", "bn"), default="frozen")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile of one step")
    parser.add_argument(
        "--loss-size",
        type=int,
        nargs=3,
        default=(8, 800, 1344),
        metavar=("N", "H", "W"),
        help="batch and image size of the assignment + loss comparison (0 0 0 skips it)",
    )
    parser.add_argument("--loss-boxes", type=int, default=20, help="boxes per image in the loss comparison")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.loss_size = 1, 256, (2, 256, 384)
    rounds = timed_rounds(args, 7)
    if args.size % 128:
        parser.error("--size must be a multiple of 128 so that no padding differs between the two")
    start_benchmark("FCOS training step: msadkit / torchvision", args.threads)

    torch.manual_seed(0)
    ours = build_ours(args.num_classes, args.backbone)
    torchvision_model = build_torchvision(args.num_classes, args.size, args.backbone)
    counts = [sum(p.numel() for p in trainable_parameters(m)) for m in (ours, torchvision_model)]
    print(
        f"   batch {args.batch} x 3 x {args.size} x {args.size}, {args.boxes} boxes per image, K={args.num_classes}, "
        f"backbone '{args.backbone}'; trainable parameters msadkit {counts[0]:,}, torchvision {counts[1]:,}"
    )
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    targets = synthetic_boxes(args.batch, args.size, args.size, args.boxes, args.num_classes)
    steps = make_steps(ours, torchvision_model, images, targets)

    times = interleaved_times(steps, rounds=rounds, warmup=args.warmup)
    if not args.no_profile:
        profile_steps(steps, ours, torchvision_model)
    loss_batch, loss_height, loss_width = args.loss_size
    if loss_batch > 0:
        loss_contenders = make_loss_contenders(
            torchvision_model,
            batch=loss_batch,
            height=loss_height,
            width=loss_width,
            boxes=args.loss_boxes,
            num_classes=args.num_classes,
        )
        loss_times = interleaved_times(loss_contenders, rounds=rounds, warmup=args.warmup)
        loss_ratio, _ = ratio_summary(loss_times, "msadkit", "torchvision")
        print(
            f"median assignment + loss: msadkit {median_ms(loss_times['msadkit']):.0f} ms, torchvision "
            f"{median_ms(loss_times['torchvision']):.0f} ms; msadkit/torchvision {loss_ratio:.3f} (median of per-round ratios)"
        )
    per_round, of_medians = ratio_summary(times, "msadkit", "torchvision")
    print(
        f"median step: msadkit {median_ms(times['msadkit']):.0f} ms, torchvision {median_ms(times['torchvision']):.0f} ms "
        f"over {rounds} interleaved rounds; ratio of medians {of_medians:.3f}"
    )
    verdict = target_verdict(per_round, TARGET_RATIO)
    print(f"RATIO msadkit/torchvision step = {per_round:.3f} (median of per-round ratios; {verdict})")


if __name__ == "__main__":
    main()
