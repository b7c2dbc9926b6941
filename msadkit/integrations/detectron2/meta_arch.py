"""``MsadkitDetector``: any msadkit model as a detectron2 meta-architecture.

detectron2 hands a model a list of dicts, one per image, holding ``"image"`` (a ``(C, H, W)`` uint8
tensor in ``cfg.INPUT.FORMAT`` at the data loader's resized size), ``"instances"`` (``gt_boxes``,
``gt_classes``) while training, and the original ``"height"`` / ``"width"``. msadkit's models take a
uint8 RGB batch padded to a size divisibility, normalised on the device by the config's
``model.pixel_*`` convention, the valid size of each image and target dicts
(``docs/architecture.md``). This module converts between the two and nothing else: the model is
``msadkit.modeling.registry.build_model`` of the msadkit config, unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from msadkit.data.batching import collate_detection
from msadkit.distill.distiller import Distiller
from msadkit.engine.train.trainer import build_training_model
from msadkit.errors import ConfigError, InputError
from msadkit.integrations.detectron2.config import msadkit_config_from_cfg
from msadkit.modeling.image_batch import PixelNormalizer
from msadkit.modeling.registry import build_model

__all__ = ["INPUT_FORMATS", "MsadkitDetector"]

# msadkit models (and the ImageNet checkpoints they start from) see RGB; detectron2 also reads BGR.
INPUT_FORMATS = ("RGB", "BGR")


@META_ARCH_REGISTRY.register()
class MsadkitDetector(nn.Module):
    """A msadkit detector, MSAD teacher or distiller behind detectron2's model interface.

    A distiller's student is registered as ``model`` and its loss terms as ``distill_losses``, while
    the distiller itself (and through it the frozen teacher) is kept off the module tree. So for
    every kind of model ``state_dict()`` holds ``model.<msadkit key>`` for exactly the weights of
    msadkit's ``model_final.pth`` (plus ``distill_losses.*`` adapters while distilling), and
    ``checkpoint_convert`` maps checkpoints by the prefix alone.

    Args:
        model: what ``msadkit.modeling.registry.build_model`` returned.
        pixel_mean: mean in 0..255 in ``pixel_format`` order (msadkit's ``model.pixel_mean``).
        pixel_std: standard deviation in 0..255 (msadkit's ``model.pixel_std``).
        pixel_format: channel order the msadkit model expects (``model.pixel_format``: rgb or bgr).
        size_divisibility: padded height and width are multiples of it (msadkit's
            ``data.size_divisibility``: 32, or 256 for MSAD).
        input_format: channel order of the images detectron2 loads (``cfg.INPUT.FORMAT``).
        msadkit_config: the resolved msadkit config the model was built from (kept for export).
    """

    @configurable
    def __init__(
        self,
        *,
        model: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        input_format: str = "RGB",
        msadkit_config: dict[str, Any] | None = None,
        pixel_format: str = "rgb",
    ) -> None:
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ConfigError(f"INPUT.FORMAT must be one of {INPUT_FORMATS} for MsadkitDetector, got {input_format!r}")
        if size_divisibility < 1:
            raise ConfigError(f"data.size_divisibility must be >= 1, got {size_divisibility}")
        if isinstance(model, Distiller):
            self.model = model.student
            self.distill_losses = model.distill_losses
            # A one-element list keeps the distiller (which holds student and teacher) unregistered.
            self._distiller: list[Distiller] = [model]
        else:
            self.model = model
            self._distiller = []
        # Non-persistent statistics: they come from the config, never from a checkpoint.
        self.pixels = PixelNormalizer(pixel_mean, pixel_std, pixel_format)
        self.size_divisibility = int(size_divisibility)
        self.input_format = input_format
        self.msadkit_config = msadkit_config

    @classmethod
    def from_config(cls, cfg: CfgNode, *, for_inference: bool = False) -> dict[str, Any]:
        """Constructor arguments from a detectron2 config with an ``MSADKIT`` section.

        Args:
            cfg: the detectron2 config.
            for_inference: build only the deployable model (a distiller's student, no teacher).
        """
        config = msadkit_config_from_cfg(cfg)
        data = config["data"]
        return {
            "model": build_model(config) if for_inference else build_training_model(config),
            "pixel_mean": config["model"]["pixel_mean"],
            "pixel_std": config["model"]["pixel_std"],
            "pixel_format": config["model"]["pixel_format"],
            "size_divisibility": data["size_divisibility"],
            "input_format": cfg.INPUT.FORMAT,
            "msadkit_config": config,
        }

    @property
    def device(self) -> torch.device:
        return self.pixels.mean.device

    @property
    def distiller(self) -> Distiller | None:
        """The distiller training ``model``, or None for a plain model."""
        return self._distiller[0] if self._distiller else None

    def train(self, mode: bool = True) -> "MsadkitDetector":
        super().train(mode)
        if self._distiller:
            # Its own flag chooses losses or detections; its train() also keeps the teacher in eval.
            self._distiller[0].train(mode)
        return self

    def preprocess_images(self, batched_inputs: list[dict[str, Any]]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalise and pad the images as msadkit's data pipeline does.

        Args:
            batched_inputs: detectron2 inputs; ``"image"`` is ``(3, Hi, Wi)`` uint8 in ``input_format``.

        Returns:
            ``images (N, 3, H, W)`` float32 in the model's ``pixel_format``, ``(x - mean) / std``,
            padded with 0 at the bottom and right to multiples of ``size_divisibility``, and the
            ``(Hi, Wi)`` of each image.
        """
        if not batched_inputs:
            raise InputError("MsadkitDetector got an empty list of inputs")
        samples = []
        for index, item in enumerate(batched_inputs):
            image = item.get("image") if isinstance(item, dict) else None
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise InputError(f"input {index}: 'image' must be a (3, H, W) tensor, got {shape}")
            if image.dtype != torch.uint8:
                raise InputError(f"input {index}: 'image' must be uint8 (as detectron2's DatasetMapper gives), got {image.dtype}")
            image = image.to(device=self.device)
            # PixelNormalizer takes RGB and applies the model's own channel order.
            samples.append((image.flip(0) if self.input_format == "BGR" else image, {}))
        batch = collate_detection(samples, size_divisibility=self.size_divisibility)
        return self.pixels(batch.images, batch.image_sizes), batch.image_sizes

    def targets(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Tensor]]:
        """msadkit targets ``{"boxes": (M, 4) xyxy float32, "labels": (M,) int64}`` from ``"instances"``."""
        targets = []
        for index, item in enumerate(batched_inputs):
            instances = item.get("instances")
            if not isinstance(instances, Instances):
                raise InputError(f"input {index}: training needs 'instances' (gt_boxes, gt_classes) from the data loader")
            targets.append(
                {
                    "boxes": instances.gt_boxes.tensor.to(device=self.device, dtype=torch.float32),
                    "labels": instances.gt_classes.to(device=self.device, dtype=torch.int64),
                }
            )
        return targets

    def postprocess(
        self,
        detections: list[dict[str, Tensor]],
        batched_inputs: list[dict[str, Any]],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Instances]]:
        """detectron2 results: ``Instances`` rescaled to each input's original ``height`` x ``width``."""
        results = []
        for detection, item, (height, width) in zip(detections, batched_inputs, image_sizes):
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(detection["boxes"])
            instances.scores = detection["scores"]
            instances.pred_classes = detection["labels"]
            results.append(
                {"instances": detector_postprocess(instances, item.get("height", height), item.get("width", width))}
            )
        return results

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, Tensor] | list[dict[str, Instances]]:
        """Losses in training mode, ``[{"instances": Instances}]`` per image in eval mode.

        Args:
            batched_inputs: one dict per image (see the module docstring).
        """
        images, image_sizes = self.preprocess_images(batched_inputs)
        if not self.training:
            return self.postprocess(self.model(images, image_sizes), batched_inputs, image_sizes)
        targets = self.targets(batched_inputs)
        if self._distiller:
            distiller = self._distiller[0]
            # Ramped losses follow detectron2's iteration, so they survive a resume.
            distiller.iteration = _current_iteration(distiller.iteration)
            return distiller(images, image_sizes, targets)
        return self.model(images, image_sizes, targets)


def _current_iteration(fallback: int) -> int:
    """detectron2's iteration when called inside a trainer (an ``EventStorage``), else ``fallback``."""
    try:
        return int(get_event_storage().iter)
    except AssertionError:  # no EventStorage: called outside a trainer
        return fallback
