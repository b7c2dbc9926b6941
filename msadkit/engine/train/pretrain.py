"""Pretraining the slimmable ResNet-50 as a classifier on synthetic crops (``msadkit pretrain``).

The paper's detectors start from ImageNet-pretrained slimmable weights. The embedded experiments
get the same structure: the backbone first learns to classify crops of the synthetic *training*
stream (the four shapes and background, :mod:`msadkit.data.synthetic_crops`), then its weights are
written in the official slimmable checkpoint layout (``{"model": {"features.<k>...": ...}}``, one
BN per width, see :mod:`msadkit.modeling.backbones.slimmable`), so a config loads them through
``model.backbone.weights`` and the same strict loader as the real ``s_resnet50_0.25_0.5_0.75_1.0.pt``.

Only the width that was trained is stored: its convolutions are the leading ``[:out, :in]`` block
of the full-width tensors (all the loader reads at that width) and its BN sits at that width's
index, which keeps a width-0.25 checkpoint near 6 MB instead of the ~100 MB of the full layout.
Loading it at a wider width fails in the loader with a message naming the too-small tensors.

The file is cached under ``<msadkit cache>/pretrained/`` by its settings: generated once, reused.

This loop does not run on the Lightning task and trainer the detectors train with, on purpose: it
trains a classifier on one in-memory tensor of crops (no detection batches, targets, run folder,
validation or resume), in about a minute, and its output is a cached file keyed by its settings
whose bits every demo number depends on; its learning-rate schedule does come from
:mod:`msadkit.engine.train.schedule` (:func:`~msadkit.engine.train.schedule.warmup_cosine_lr`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from msadkit.data.build import cache_dir
from msadkit.data.synthetic_crops import CROP_CLASS_NAMES, synthetic_training_crops
from msadkit.engine.train.pretrain_settings import QUICK_SETTINGS, PretrainSettings
from msadkit.engine.train.schedule import warmup_cosine_lr
from msadkit.modeling.backbones.slimmable import WIDTHS, SlimmableResNet50, official_module_pairs
from msadkit.utils.checkpoint import save_atomic

__all__ = [
    "PretrainSettings",
    "QUICK_SETTINGS",
    "pretrain_backbone",
    "official_state_dict",
    "save_pretrained",
    "cached_pretrained_path",
    "cached_pretrained_backbone",
]

# ImageNet statistics in 0..255 RGB: the detector configs normalise with the same ones
# (model.pixel_mean / model.pixel_std), so pretrained features see the inputs they will see later.
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


class _Classifier(nn.Module):
    """Backbone -> global average pool of res5 -> linear: ``(N, 3, S, S)`` -> ``(N, num_classes)`` logits."""

    def __init__(self, width: float, num_classes: int) -> None:
        super().__init__()
        self.backbone = SlimmableResNet50(width, norm="BN")
        self.fc = nn.Linear(self.backbone.out_channels["res5"], num_classes)
        # Every block starts as the identity (last BN scale 0, Goyal et al. 2017): 16 bottlenecks
        # from scratch then learn from the first steps instead of stalling or diverging.
        for block in self.backbone.modules():
            if hasattr(block, "norm3"):
                nn.init.zeros_(block.norm3.weight)
        mean = torch.tensor(_PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_PIXEL_STD).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.pixel_mean) / self.pixel_std
        return self.fc(self.backbone(x)["res5"].mean(dim=(2, 3)))


@torch.no_grad()
def _accuracy(model: _Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    model.train()
    return correct / max(1, len(labels))


def pretrain_backbone(
    settings: PretrainSettings, *, log: Callable[[str], None] | None = None
) -> tuple[_Classifier, dict[str, Any]]:
    """Train the classifier; returns it and a report (losses, hold-out accuracy, crop counts, seconds).

    Crops are flipped horizontally at random (the shapes are mirror-symmetric in distribution).
    """
    settings.check()
    log = log or (lambda _message: None)
    start = time.perf_counter()
    images, labels = synthetic_training_crops(
        num_images=settings.num_images, image_size=settings.image_size, crop_size=settings.crop_size,
        seed=settings.seed,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(labels), generator=generator)
    num_holdout = int(len(labels) * settings.holdout)
    held_images, held_labels = images[order[:num_holdout]], labels[order[:num_holdout]]
    train_images, train_labels = images[order[num_holdout:]], labels[order[num_holdout:]]
    log(f"crops: {len(train_labels)} training, {num_holdout} held out, from {settings.num_images} scenes "
        f"({time.perf_counter() - start:.0f} s)")

    torch.manual_seed(settings.seed)
    model = _Classifier(settings.width, len(CROP_CLASS_NAMES))
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, momentum=0.9,
    )
    losses: list[float] = []
    model.train()
    for step in range(settings.iterations):
        index = torch.randint(len(train_labels), (min(settings.batch_size, len(train_labels)),), generator=generator)
        batch = train_images[index]
        flip = torch.rand(len(index), generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, base_lr=settings.lr, total_iters=settings.iterations)
        loss = nn.functional.cross_entropy(model(batch), train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == settings.iterations:
            recent = losses[-100:]
            log(f"step {step + 1}/{settings.iterations}: loss {sum(recent) / len(recent):.3f}")
    report = {
        "settings": dataclasses.asdict(settings),
        "num_train_crops": len(train_labels),
        "num_holdout_crops": num_holdout,
        "first_loss": losses[0],
        "last_loss": sum(losses[-20:]) / len(losses[-20:]),
        "holdout_accuracy": _accuracy(model, held_images, held_labels, 256) if num_holdout else None,
        "seconds": time.perf_counter() - start,
    }
    return model, report


def official_state_dict(backbone: SlimmableResNet50) -> dict[str, torch.Tensor]:
    """The backbone's tensors under the official slimmable keys (the inverse of the strict loader).

    Convolutions keep their shape (the leading block of the full-width tensor); every norm's tensors
    go to ``<module>.bn.<i>.<t>`` with ``i`` the index of the backbone's width in :data:`WIDTHS`.
    """
    own = backbone.state_dict()
    width_index = WIDTHS.index(backbone.width)
    state: dict[str, torch.Tensor] = {}
    for ours, theirs, is_conv in official_module_pairs(backbone):
        if is_conv:
            state[f"{theirs}.weight"] = own[f"{ours}.weight"].detach().clone()
            continue
        for key, value in own.items():
            if key.startswith(f"{ours}."):
                state[f"{theirs}.bn.{width_index}.{key[len(ours) + 1:]}"] = value.detach().clone()
    return state


def save_pretrained(model: _Classifier, report: dict[str, Any], path: str | Path) -> Path:
    """Write ``{"model": official state dict + classifier, "msadkit_pretrain": report}`` atomically."""
    state = official_state_dict(model.backbone)
    # The official file's classifier is ignored by the loader; keeping ours documents the classes.
    state["classifier.0.weight"] = model.fc.weight.detach().clone()
    state["classifier.0.bias"] = model.fc.bias.detach().clone()
    payload = {"model": state, "msadkit_pretrain": {**report, "classes": list(CROP_CLASS_NAMES)}}
    return save_atomic(payload, path)


def cached_pretrained_path(settings: PretrainSettings) -> Path:
    """Where the cache keeps the checkpoint of ``settings``: ``<cache>/pretrained/<name>.pt``."""
    key = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "pretrained" / f"slimmable_r50_w{settings.width:g}_synthetic_{key}.pt"


def cached_pretrained_backbone(
    settings: PretrainSettings | None = None, *, quick: bool = False, log: Callable[[str], None] | None = None
) -> Path:
    """The cached checkpoint of ``settings`` (default: :class:`PretrainSettings`, or
    :data:`QUICK_SETTINGS` with ``quick``), trained and written first if it is not there yet."""
    settings = settings or (QUICK_SETTINGS if quick else PretrainSettings())
    path = cached_pretrained_path(settings)
    if not path.is_file():
        model, report = pretrain_backbone(settings, log=log)
        save_pretrained(model, report, path)
    return path
