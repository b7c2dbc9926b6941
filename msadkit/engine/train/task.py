"""The Lightning module that trains any msadkit detector or distiller."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from msadkit.engine.train.schedule import warmup_multistep_factor
from msadkit.engine.train.training_health import TrainingDiverged
from msadkit.modeling.image_batch import pixel_normalizer, to_model_input

__all__ = ["DetectionTask", "build_optimizer"]

_NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, solver: dict[str, Any]) -> torch.optim.SGD:
    """SGD with momentum; norm-layer parameters get no weight decay (detectron2's default)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, _NORM_TYPES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": solver["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=solver["base_lr"], momentum=solver["momentum"])


class DetectionTask(L.LightningModule):
    """Wraps a model whose ``forward(images, image_sizes, targets)`` returns a dict of losses.

    A model that has an ``iteration`` attribute (a distiller with a ramped loss) gets the
    trainer's global step before every forward, so ramps survive a resume.

    Args:
        model: a detector or distiller.
        config: the resolved config (its ``solver`` section drives the optimiser and schedule).
    """

    def __init__(self, model: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.channels_last = bool(config["trainer"].get("channels_last", False))
        # The loaders hand over uint8 pixels; they are normalised once on the training device.
        self.pixels = pixel_normalizer(config)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return to_model_input(batch, self.pixels, device, channels_last=self.channels_last)

    def forward(self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None) -> Any:
        return self.model(images, image_sizes)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if hasattr(self.model, "iteration"):
            self.model.iteration = int(self.global_step)
        losses = self.model(batch.images, batch.image_sizes, batch.targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            # Iterations count from 1, as in the iter_<step>.ckpt names and TrainingHealth.
            raise TrainingDiverged(
                f"training diverged at iteration {self.global_step + 1}: non-finite loss ({values}); "
                "lower solver.base_lr or enable solver.clip_grad_norm"
            )
        # For TrainingHealth, which names the terms when it stops a diverging run.
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        batch_size = batch.images.shape[0]
        # Each rank's own values, for the progress bar and the metrics hook; the hook
        # (msadkit.engine.train.metrics_logger) averages them over the ranks and sends them to the
        # loggers at the iteration of metrics.jsonl, so Lightning does not log them itself.
        self.log("train/loss", total.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), logger=False, batch_size=batch_size)
        # A distiller's unweighted loss values: logged beside the losses, not part of the total.
        for name, value in getattr(self.model, "raw_losses", {}).items():
            self.log(f"train/{name}", value, logger=False, batch_size=batch_size)
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> list[dict[str, Tensor]]:
        """Detections of the batch in eval mode (a distiller's are its student's): ``list[dict]``
        with ``"boxes" (D, 4)``, ``"scores" (D,)``, ``"labels" (D,)``, one per image; scored by
        ``msadkit.engine.train.validation.PeriodicValidation`` every ``trainer.eval_period`` iterations."""
        return self.model(batch.images, batch.image_sizes)

    def configure_optimizers(self) -> Any:
        solver = self.config["solver"]
        optimizer = build_optimizer(self.model, solver)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda it: warmup_multistep_factor(
                it,
                steps=solver["steps"],
                gamma=solver["gamma"],
                warmup_iters=solver["warmup_iters"],
                warmup_factor=solver["warmup_factor"],
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
