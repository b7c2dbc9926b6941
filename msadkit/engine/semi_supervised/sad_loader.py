"""Semi-supervised adaptive distillation (SAD, docs/methods.md §2.4): alternating batches.

With teacher pseudo-labels (:mod:`msadkit.engine.semi_supervised.pseudo_labels`), training
alternates batches as the original loader did: even batches come from the labeled training set,
odd batches from the labeled set together with the pseudo-labeled images
(:class:`AlternatingSampler`, :func:`build_train_loader`). On every batch the ground-truth losses
use the (pseudo-)boxes as hard targets and the distillation terms use the teacher's soft outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import ConcatDataset, Sampler

from msadkit.data import CocoDetectionDataset, DetectionCollator
from msadkit.data.build import resolve_data_paths
from msadkit.data.resumable_loader import ResumableLoader, ResumableSampler, shuffled_order
from msadkit.engine.semi_supervised.pseudo_label_check import refuse_empty_pseudo_labels
from msadkit.errors import ConfigError, DatasetError

__all__ = ["AlternatingSampler", "build_train_loader", "pseudo_label_dataset"]


class AlternatingSampler(Sampler[int]):
    """Index stream whose batches alternate: labeled, then labeled ∪ pseudo-labeled, and so on.

    Indices ``[0, num_labeled)`` are labeled images and ``[num_labeled, num_labeled + num_pseudo)``
    pseudo-labeled ones (the order of a ``ConcatDataset([labeled, pseudo])``). The stream is made
    of blocks of ``batch_size * world_size`` indices: even blocks are drawn from a shuffled
    permutation of the labeled images, odd blocks from a shuffled permutation of all images.
    Used with ``DataLoader(batch_size=batch_size, drop_last=True)``, batch ``2k`` holds only
    labeled images and batch ``2k + 1`` images of either kind. Under DDP the training loader's
    :class:`ResumableSampler` hands process ``r`` the positions ``r, r + W, ...`` of :meth:`epoch_stream`;
    with blocks of ``batch_size * W`` every process then gets whole labeled and mixed batches in
    the same alternation.

    An epoch has ``2 * max(1, num_labeled // (batch_size * world_size))`` batches: each labeled
    image appears at most once per epoch in the labeled batches (the permutation is repeated only
    if there are fewer labeled images than one global batch). Each epoch draws new permutations
    from ``seed`` and the epoch number; ``set_epoch`` sets it (Lightning calls it, also through the
    distributed wrapper), and each pass advances it by one so that repeated passes differ even
    without ``set_epoch``.

    Args:
        num_labeled: images of the labeled set (>= 1).
        num_pseudo: pseudo-labeled images (>= 0).
        batch_size: images per batch and process.
        seed: base seed of the permutations.
        world_size: number of training processes.
    """

    def __init__(
        self, num_labeled: int, num_pseudo: int, batch_size: int, *, seed: int = 0, world_size: int = 1
    ) -> None:
        if num_labeled < 1 or num_pseudo < 0 or batch_size < 1 or world_size < 1:
            raise ValueError(
                "AlternatingSampler: need num_labeled >= 1, num_pseudo >= 0, batch_size >= 1 and world_size >= 1, "
                f"got {num_labeled}, {num_pseudo}, {batch_size}, {world_size}"
            )
        self.num_labeled = int(num_labeled)
        self.num_pseudo = int(num_pseudo)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.epoch = 0

    @property
    def block_size(self) -> int:
        """Indices of one global batch (all processes)."""
        return self.batch_size * self.world_size

    @property
    def batches_per_kind(self) -> int:
        """Global labeled batches per epoch (and as many mixed ones)."""
        return max(1, self.num_labeled // self.block_size)

    def __len__(self) -> int:
        return 2 * self.batches_per_kind * self.block_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _stream(self, population: int, length: int, generator: torch.Generator) -> list[int]:
        """``length`` indices from shuffled permutations of ``range(population)``, repeated if needed."""
        out: list[int] = []
        while len(out) < length:
            out.extend(torch.randperm(population, generator=generator).tolist())
        return out[:length]

    def epoch_stream(self, epoch: int) -> list[int]:
        """The global index stream of ``epoch`` (all processes), ``len(self)`` indices."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        length = self.batches_per_kind * self.block_size
        labeled = self._stream(self.num_labeled, length, generator)
        mixed = self._stream(self.num_labeled + self.num_pseudo, length, generator)
        stream: list[int] = []
        for start in range(0, length, self.block_size):
            stream += labeled[start : start + self.block_size]
            stream += mixed[start : start + self.block_size]
        return stream

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch
        self.epoch += 1
        yield from self.epoch_stream(epoch)


def _world_size(config: dict[str, Any]) -> int:
    trainer = config["trainer"]
    devices = trainer["devices"]
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    if not isinstance(devices, int) or devices < 1:
        # "auto" / -1: the number is only known to Lightning; one process is the common case here.
        devices = 1
    return devices * int(trainer["num_nodes"])


def pseudo_label_dataset(config: dict[str, Any], *, transform: Any = None) -> CocoDetectionDataset:
    """The pseudo-labeled images of ``data.pseudo_labels_json``.

    ``data.pseudo_labels_images`` is the folder their ``file_name`` entries are relative to; for
    the synthetic dataset it defaults to the folder of its ``unlabeled`` split.

    Raises:
        ConfigError: no image folder is configured and none can be inferred.
        DatasetError: the json or its images are missing or malformed.
    """
    data = config["data"]
    json_path = Path(data["pseudo_labels_json"]).expanduser()
    images = data["pseudo_labels_images"]
    if not images:
        paths = resolve_data_paths(config) if data["dataset"] == "synthetic" else {}
        if "unlabeled_images" not in paths:
            raise ConfigError(
                f"data.pseudo_labels_images must be set to the image folder of data.pseudo_labels_json={json_path} "
                "(it can only be left empty for a synthetic dataset with data.synthetic.num_unlabeled > 0)"
            )
        images = paths["unlabeled_images"]
    return CocoDetectionDataset(json_path, Path(images).expanduser(), transform=transform)


def build_train_loader(config: dict[str, Any], train_set: CocoDetectionDataset) -> ResumableLoader:
    """The training loader: plain shuffled, or alternating with pseudo-labels when
    ``data.pseudo_labels_json`` is set.

    Either way a :class:`ResumableLoader`: its order and each sample's augmentation follow from
    ``trainer.seed``, the epoch and the position alone, so a resumed run repeats the uninterrupted
    one (``msadkit.data.resumable_loader``).

    Raises:
        ConfigError / DatasetError: the pseudo-label json, its images or its categories do not fit.
    """
    data = config["data"]
    seed = int(config["trainer"]["seed"])
    batch_size = int(config["solver"]["batch_size"])
    dataset: torch.utils.data.Dataset = train_set
    if not data["pseudo_labels_json"]:
        sampler = ResumableSampler(shuffled_order(len(train_set), seed), len(train_set), seed=seed)
        # A dataset smaller than a batch still gives one (smaller) batch per epoch.
        drop_last = len(sampler) >= batch_size
    else:
        pseudo = pseudo_label_dataset(config, transform=train_set.transform)
        refuse_empty_pseudo_labels(config, pseudo.coco_json_path)
        if pseudo.category_ids != train_set.category_ids:
            raise DatasetError(
                f"pseudo-label file {pseudo.coco_json_path} has category ids {pseudo.category_ids} but the training "
                f"annotations {train_set.coco_json_path} have {train_set.category_ids}; label the images with a "
                "teacher trained on this dataset"
            )
        alternating = AlternatingSampler(
            len(train_set), len(pseudo), batch_size, seed=seed, world_size=_world_size(config)
        )
        # Process r takes positions r, r + W, ... of the global stream: whole labeled and mixed
        # batches in the same alternation on every process.
        sampler = ResumableSampler(alternating.epoch_stream, len(alternating), seed=seed)
        dataset = ConcatDataset([train_set, pseudo])
        drop_last = True
    workers = int(data["num_workers"])
    return ResumableLoader(
        dataset,
        sampler,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=DetectionCollator(data["size_divisibility"]),
        # Worker base seeds come from here, not from the training process's generator.
        generator=torch.Generator().manual_seed(seed),
    )
