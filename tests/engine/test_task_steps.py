"""The Lightning task's steps: validation hands each image's valid size to the detector (boxes of a
small image in a padded batch stay out of its padding), training passes the global step to a ramped
model and logs every loss term, channels-last comes from the config, and the optimiser keeps every
trainable parameter exactly once."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from msadkit.config import load_config
from msadkit.data.batching import DetectionBatch
from msadkit.engine.train.task import DetectionTask, build_optimizer
from msadkit.modeling.registry import build_model


def test_validation_boxes_of_a_small_image_stay_inside_it_not_inside_the_padded_batch():
    torch.manual_seed(0)
    # An untrained FCOS scores about prior_prob (0.01); a zero threshold keeps its boxes to look at.
    config = load_config("fcos_demo", ["model.fcos.score_thresh=0.0"])
    model = build_model(config).eval()
    task = DetectionTask(model, config)
    small_h, small_w = 24, 40
    raw = DetectionBatch(
        images=torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8),
        image_sizes=[(64, 64), (small_h, small_w)],
        targets=[{}, {}],
    )
    batch = task.transfer_batch_to_device(raw, torch.device("cpu"), 0)
    with torch.no_grad():
        detections = task.validation_step(batch, 0)
        padded = model(batch.images)  # every image taken as the full 64 x 64 batch

    # Without the sizes, the small image's boxes do reach into its padding: the check below can fail.
    reach = padded[1]["boxes"]
    assert bool(((reach[:, 2] > small_w) | (reach[:, 3] > small_h)).any())

    assert len(detections) == 2
    boxes = detections[1]["boxes"]
    assert len(boxes) > 0
    assert float(boxes[:, 0::2].min()) >= 0.0 and float(boxes[:, 1::2].min()) >= 0.0
    assert float(boxes[:, 2].max()) <= small_w
    assert float(boxes[:, 3].max()) <= small_h
    # The full-size image is clipped to the whole batch, as before.
    assert float(detections[0]["boxes"][:, 2:].max()) <= 64.0


class _RecordingModel(nn.Module):
    """Two named loss terms of one weight; remembers the ``iteration`` and sizes each step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.5))
        self.iteration = -1
        self.seen: list[tuple[int, list]] = []
        self.returned: list[dict[str, float]] = []

    def forward(self, images, image_sizes=None, targets=None):
        self.seen.append((self.iteration, list(image_sizes)))
        losses = {"loss_a": 2.0 * self.weight, "loss_b": self.weight**2}
        self.returned.append(
            {name: float(value.detach()) for name, value in losses.items()}
        )
        return losses


def _batches(count: int) -> list[DetectionBatch]:
    images = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    return [
        DetectionBatch(images=images, image_sizes=[(16, 16), (8, 12)], targets=[{}, {}])
        for _ in range(count)
    ]


@pytest.mark.filterwarnings(
    "ignore:You defined a `validation_step` but have no `val_dataloader`"
)
def test_training_steps_pass_the_global_step_and_log_every_term(tmp_path):
    config = load_config(
        "fcos_demo",
        ["solver.base_lr=0.01", "solver.warmup_iters=0", f"output_dir={tmp_path}"],
    )
    model = _RecordingModel()
    task = DetectionTask(model, config)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(
        task,
        train_dataloaders=torch.utils.data.DataLoader(_batches(3), batch_size=None),
    )

    # A ramped distiller reads model.iteration: it is the trainer's step before each forward.
    assert [iteration for iteration, _ in model.seen] == [0, 1, 2]
    assert all(sizes == [(16, 16), (8, 12)] for _, sizes in model.seen)
    last = model.returned[-1]
    assert set(task.last_losses) == {"loss_a", "loss_b"}
    assert float(task.last_losses["loss_a"]) == pytest.approx(last["loss_a"])
    logged = trainer.callback_metrics
    assert float(logged["train/loss_a"]) == pytest.approx(last["loss_a"])
    assert float(logged["train/loss_b"]) == pytest.approx(last["loss_b"])
    assert float(logged["train/loss"]) == pytest.approx(last["loss_a"] + last["loss_b"])
    # The total, and only the total, is shown in the progress bar.
    assert set(trainer.progress_bar_metrics) == {"train/loss"}


def test_channels_last_comes_from_the_trainer_section_and_defaults_to_off():
    config = load_config("fcos_demo", ["trainer.channels_last=true"])
    batch = _batches(1)[0]
    on = DetectionTask(_RecordingModel(), config)
    assert on.channels_last is True
    moved = on.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved.images.dtype == torch.float32
    assert moved.images.is_contiguous(memory_format=torch.channels_last)
    assert not moved.images.is_contiguous()

    # A hand-made config whose trainer section does not name the option: plain contiguous images.
    without = {
        **config,
        "trainer": {k: v for k, v in config["trainer"].items() if k != "channels_last"},
    }
    off = DetectionTask(_RecordingModel(), without)
    assert off.channels_last is False
    assert off.transfer_batch_to_device(
        batch, torch.device("cpu"), 0
    ).images.is_contiguous()


def test_build_optimizer_keeps_every_trainable_parameter_once_past_tied_and_frozen_ones():
    first, second, partly_frozen = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight  # tied: seen again in `second`, before its own bias
    partly_frozen.weight.requires_grad_(False)  # frozen weight, trainable bias
    norm = nn.GroupNorm(1, 3)
    net = nn.Sequential(first, second, partly_frozen, norm)
    optimizer = build_optimizer(
        net, {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    )
    groups = [[id(p) for p in group["params"]] for group in optimizer.param_groups]
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    assert groups[0] == [
        id(first.weight),
        id(first.bias),
        id(second.bias),
        id(partly_frozen.bias),
    ]
    assert groups[1] == [id(norm.weight), id(norm.bias)]
