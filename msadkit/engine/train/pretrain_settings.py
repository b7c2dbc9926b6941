"""What ``msadkit pretrain`` trains: its settings and their checks, importable without torch (the
command line builds its options from these defaults on every ``msadkit`` call)."""

from __future__ import annotations

from dataclasses import dataclass

from msadkit.errors import ConfigError

__all__ = ["PretrainSettings", "QUICK_SETTINGS"]


@dataclass(frozen=True)
class PretrainSettings:
    """What ``msadkit pretrain`` trains; every field enters the cache key.

    Attributes:
        width: slimmable width trained and stored (one of 0.25, 0.5, 0.75, 1.0).
        num_images: synthetic training-stream scenes the crops come from.
        image_size: side of those scenes (the detection dataset's ``data.synthetic.image_size``).
        crop_size: side of every crop fed to the classifier.
        iterations: SGD steps.
        batch_size: crops per step.
        lr: peak learning rate (cosine decay to 0 after a linear warm-up over 5 % of the steps).
        weight_decay: SGD weight decay.
        holdout: share of the crops kept out of training to report accuracy.
        seed: the synthetic dataset seed (``data.synthetic.seed``) and the training seed.
    """

    width: float = 0.25
    num_images: int = 1000
    image_size: int = 256
    crop_size: int = 48
    iterations: int = 800
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    holdout: float = 0.1
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        from msadkit.modeling.backbones.slimmable import WIDTHS  # torch: only when a run is checked

        if self.width not in WIDTHS:
            raise ConfigError(f"pretrain: width must be one of {WIDTHS}, got {self.width}")
        for name in ("num_images", "image_size", "crop_size", "iterations", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"pretrain: {name} must be a positive integer, got {value!r}")
        if self.crop_size < 32:
            raise ConfigError(f"pretrain: crop_size must be >= 32 (res5 has stride 32), got {self.crop_size}")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.holdout < 1):
            raise ConfigError(
                f"pretrain: need lr > 0, weight_decay >= 0 and 0 <= holdout < 1, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}, holdout={self.holdout}"
            )


# A seconds-long run for tests and ``--quick``: it only checks the path works.
QUICK_SETTINGS = PretrainSettings(num_images=8, image_size=64, crop_size=32, iterations=3, batch_size=8)
