"""Learning-rate schedule, weight-decay exclusion and gradient clipping, checked by hand through the
kit's own training path (not only through the detectron2 integration)."""

import json

import lightning as L
import pytest
import torch
from torch import nn

from msadkit.config import load_config
from msadkit.engine.train.schedule import warmup_cosine_lr, warmup_multistep_factor
from msadkit.engine.train.task import build_optimizer
from msadkit.engine.train.trainer import train


def test_warmup_multistep_factor_by_hand():
    # Linear from warmup_factor at 0 to 1 at warmup_iters, then x gamma at each reached step.
    values = [warmup_multistep_factor(i, steps=[4, 6], gamma=0.5, warmup_iters=3, warmup_factor=0.1) for i in range(8)]
    assert values == pytest.approx([0.1, 0.4, 0.7, 1.0, 0.5, 0.5, 0.25, 0.25])
    # A decay step inside the warm-up multiplies the warm-up ramp.
    assert warmup_multistep_factor(1, steps=[1], gamma=0.1, warmup_iters=4, warmup_factor=0.2) == pytest.approx(0.04)
    assert warmup_multistep_factor(0, steps=[], warmup_iters=0) == 1.0


def test_pretraining_cosine_schedule_by_hand():
    # 105 iterations: warm-up over 105 // 20 = 5 (0.2, 0.4, ... of base), then half a cosine over 100.
    lr = [warmup_cosine_lr(i, base_lr=0.5, total_iters=105) for i in range(105)]
    assert lr[:6] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    assert lr[55] == pytest.approx(0.25)  # halfway through the cosine
    assert lr[30] == pytest.approx(0.25 * (1 + 0.7071067811865476))  # a quarter: cos(pi / 4)
    assert warmup_cosine_lr(105, base_lr=0.5, total_iters=105) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_lr(0, base_lr=0.5, total_iters=3) == pytest.approx(0.5)  # warm-up of one iteration


def test_the_trainer_follows_the_schedule_iteration_by_iteration(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    config = load_config(
        "fcos_demo",
        [
            *tiny_overrides(run, max_iter=7),
            "solver.base_lr=0.02",
            "solver.warmup_iters=3",
            "solver.warmup_factor=0.1",
            "solver.steps=[4,6]",
            "solver.gamma=0.5",
        ],
    )
    train(config, evaluate=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {row["iter"]: row["lr"] for row in rows if "lr" in row}
    # Row i describes step i - 1, which ran at the learning rate of iteration i - 1.
    expected = {i: 0.02 * f for i, f in zip(range(1, 8), [0.1, 0.4, 0.7, 1.0, 0.5, 0.5, 0.25])}
    assert logged == pytest.approx(expected)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_norm_layers_get_no_weight_decay_and_one_step_matches_the_sgd_formula():
    torch.manual_seed(0)
    net = _Net()
    solver = {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    optimizer = build_optimizer(net, solver)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    norm_params = {id(p) for p in [*net.bn.parameters(), *net.gn.parameters()]}
    other_params = {id(p) for p in [*net.conv.parameters(), *net.fc.parameters()]}
    assert groups == {0.01: other_params, 0.0: norm_params}  # the frozen layer is not optimised
    assert all(g["lr"] == 0.1 and g["momentum"] == 0.9 for g in optimizer.param_groups)

    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    optimizer.step()
    for name, p in net.named_parameters():
        decay = 0.0 if name.startswith(("bn.", "gn.")) else 0.01
        if name.startswith("frozen."):
            assert torch.equal(p, before[name])
        else:
            # First SGD step with momentum: the buffer is the (decayed) gradient itself.
            assert torch.allclose(p, before[name] - 0.1 * (0.5 + decay * before[name]))


class _StepRecorder(L.Callback):
    """The trainable weights before and after the first optimiser step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.before = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.after = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_gradient_clipping_bounds_the_first_step_by_lr_times_the_clip_norm(tmp_path, tiny_overrides, clip):
    run = tmp_path / "run"
    lr = 0.5
    config = load_config(
        "fcos_demo",
        [
            *tiny_overrides(run, max_iter=1),
            f"solver.base_lr={lr}",
            "solver.warmup_iters=0",
            "solver.weight_decay=0",
            f"solver.clip_grad_norm={clip}",
        ],
    )
    recorder = _StepRecorder()
    train(config, callbacks=[recorder], evaluate=False)
    step = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(recorder.after, recorder.before)))
    if clip:
        # The first momentum step moves the weights by lr x the clipped gradient, whose total norm is `clip`.
        assert step.item() == pytest.approx(lr * clip, rel=1e-4)
    else:
        # Unclipped, the same step is orders of magnitude larger: the bound above is the clipping's doing.
        assert step.item() > 100 * lr * 1e-3
