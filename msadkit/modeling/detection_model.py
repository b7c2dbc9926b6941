"""The calling convention every trainable detection model shares (detectors, the MSAD teacher, a distiller).

``model(images, image_sizes, targets)`` returns the training losses in training mode and the
detections in eval mode, as detectron2 and torchvision detectors do. The argument checks and
defaults of that convention live here once; a model says only how it trains and how it detects.
"""

from __future__ import annotations

from torch import Tensor, nn

from msadkit.errors import InputError

__all__ = ["DetectionModel", "check_batch_count"]


def check_batch_count(count: int, what: str, num_images: int) -> None:
    """Raise :class:`InputError` unless ``count`` entries of ``what`` (one per image) match the batch."""
    if count != num_images:
        raise InputError(f"got {count} {what} for a batch of {num_images} images")


class DetectionModel(nn.Module):
    """Losses in training mode, detections in eval mode; subclasses implement the two branches.

    Subclasses implement :meth:`training_losses` and :meth:`detect`, and may override
    :meth:`check_batch` to reject a batch before anything else runs.
    """

    def check_batch(self, images: Tensor) -> None:
        """Raise unless ``images`` suits this model; by default the model checks where it reads them."""

    def training_losses(
        self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """The loss dict of one training step (``targets`` already matched to the batch)."""
        raise NotImplementedError

    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,)}`` in input pixels."""
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses in training mode (``targets`` required), detections in eval mode.

        Args:
            images: ``(N, 3, H, W)`` normalised, padded batch.
            image_sizes: valid ``(h, w)`` per image; defaults to the padded size ``(H, W)``.
            targets: per image ``{"boxes": (M, 4) xyxy, "labels": (M,)}`` in input pixels.

        Returns:
            Training: ``{loss name: scalar}``. Eval: per image ``{"boxes": (D, 4), "scores": (D,),
            "labels": (D,)}``.
        """
        self.check_batch(images)
        if image_sizes is None:
            image_sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        if not self.training:
            return self.detect(images, image_sizes)
        if targets is None:
            raise InputError("targets are required in training mode")
        check_batch_count(len(targets), "targets", images.shape[0])
        return self.training_losses(images, image_sizes, targets)
