"""A training loader whose order and augmentation are a function of the batch counter alone.

A resumed run repeats the uninterrupted one bit for bit when every sample it draws, and every
random number its augmentation draws, depend only on ``(trainer.seed, epoch, position)``:

- :class:`ResumableSampler` shards a per-epoch index stream over the processes (process ``r`` of
  ``W`` takes positions ``r, r + W, ...``) and hands each index out together with a seed drawn for
  its position, so the augmentation of a sample does not depend on which worker, or how many
  workers, decode it.
- :class:`SeededSamples` runs the dataset under that seed (Python ``random``, numpy and torch's
  CPU generator) and restores the caller's generators afterwards, so the data path never moves
  the training process's own random state.
- :class:`ResumableLoader` counts the batches training consumed and implements Lightning's
  stateful-loader interface (``state_dict``/``load_state_dict``, saved by the fit loop in every
  checkpoint); a restored loader starts its next pass at the saved epoch and batch.
- :class:`msadkit.engine.train.exact_resume.ExactResume` advances that counter after every training
  batch and keeps the training process's random generators in the checkpoint.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "SampleKey",
    "ResumableSampler",
    "SeededSamples",
    "ResumableLoader",
    "shuffled_order",
]

logger = logging.getLogger(__name__)


class SampleKey(NamedTuple):
    """What a :class:`ResumableSampler` yields: the dataset index and the seed of its augmentation."""

    index: int
    seed: int


def _distributed_rank_and_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shuffled_order(num_samples: int, seed: int) -> Callable[[int], list[int]]:
    """``order(epoch)``: a permutation of ``range(num_samples)`` drawn from ``seed`` and the epoch."""

    def order(epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(num_samples, generator=generator).tolist()

    return order


# A DistributedSampler subclass so that Lightning, which replaces any other sampler of a training
# loader under DDP, leaves the sharding (and the resume position) to this one.
class ResumableSampler(DistributedSampler):
    """Per-epoch index stream, sharded over processes, each index paired with its sample seed.

    The global stream of epoch ``e`` is ``order(e)`` (every process computes the same one), padded
    by repeating its head to a multiple of the world size as ``DistributedSampler`` does; process
    ``r`` takes positions ``r, r + W, ...``. Position ``p`` of epoch ``e`` gets a seed drawn from
    ``(seed, e)``, the same for any number of workers.

    Each pass advances the epoch by one, so repeated passes differ without ``set_epoch``;
    ``set_epoch`` (Lightning calls it) sets it. :meth:`resume_at` pins the epoch and the number of
    leading indices to skip for the next pass alone.

    Args:
        order: ``order(epoch) -> list[int]``, the global stream of an epoch; every epoch has
            ``num_global`` indices.
        num_global: length of every epoch's global stream.
        seed: base seed of the sample seeds.
        rank / world_size: this process and the process count; by default those of the
            initialised ``torch.distributed`` group (0 and 1 without one), read when iterating.
    """

    def __init__(
        self,
        order: Callable[[int], list[int]],
        num_global: int,
        *,
        seed: int,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if num_global < 1:
            raise ValueError(f"ResumableSampler: num_global must be >= 1, got {num_global}")
        self.order = order
        self.num_global = int(num_global)
        self.seed = int(seed)
        self._rank = rank
        self._world_size = world_size
        self.epoch = 0
        self._pending: tuple[int, int] | None = None

    # DistributedSampler's attributes, for code that reads them (its __init__ is not called).
    shuffle = True
    drop_last = False

    @property
    def rank_and_world_size(self) -> tuple[int, int]:
        rank, world = _distributed_rank_and_size()
        return (rank if self._rank is None else self._rank), (world if self._world_size is None else self._world_size)

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.rank_and_world_size[0]

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self.rank_and_world_size[1]

    def __len__(self) -> int:
        _, world = self.rank_and_world_size
        return -(-self.num_global // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        """Make the next pass epoch ``epoch``, starting after its first ``skip`` indices of this process."""
        self._pending = (int(epoch), int(skip))

    def sample_seeds(self, epoch: int, length: int) -> list[int]:
        """The seeds of positions ``0..length-1`` of epoch ``epoch`` (global positions)."""
        entropy = np.random.SeedSequence([self.seed, epoch, 0x5EED]).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
        return torch.randint(0, 2**62, (length,), generator=generator).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, skip = self._pending if self._pending is not None else (self.epoch, 0)
        self._pending = None
        self.epoch = epoch + 1
        rank, world = self.rank_and_world_size
        stream = list(self.order(epoch))
        if len(stream) != self.num_global:
            raise RuntimeError(f"ResumableSampler: order({epoch}) gave {len(stream)} indices, expected {self.num_global}")
        padded = -(-len(stream) // world) * world
        stream += stream[: padded - len(stream)]
        seeds = self.sample_seeds(epoch, padded)
        for position in range(rank + skip * world, padded, world):
            yield SampleKey(stream[position], seeds[position])


class SeededSamples(Dataset):
    """``dataset[key.index]`` computed with Python, numpy and torch (CPU) seeded from ``key.seed``.

    The caller's generator states are restored afterwards: with ``num_workers=0`` the samples are
    made in the training process, whose own random stream must not depend on the data.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        index, seed = key
        saved = (random.getstate(), np.random.get_state(), torch.random.default_generator.get_state())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        # The CPU generator alone: torch.manual_seed would also reseed (and initialise) CUDA.
        torch.random.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.default_generator.set_state(saved[2])


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` that Lightning saves and restores.

    ``batches_done`` counts the batches training consumed since the run began (advanced by
    :class:`~msadkit.engine.train.exact_resume.ExactResume`); it is the loader's whole state.
    After :meth:`load_state_dict` the next pass starts at epoch ``batches_done // len(self)``, batch ``batches_done % len(self)``.

    Args:
        dataset: the dataset (wrapped in :class:`SeededSamples`).
        sampler: the :class:`ResumableSampler` of its indices.
        **kwargs: ``DataLoader`` arguments (``batch_size``, ``drop_last``, ``num_workers``, ...).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        super().__init__(SeededSamples(dataset), sampler=sampler, **kwargs)
        self.batches_done = 0

    def state_dict(self) -> dict[str, Any]:
        return {"batches_done": self.batches_done, "batches_per_epoch": len(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches_done = int(state["batches_done"])
        per_epoch = len(self)
        if int(state.get("batches_per_epoch", per_epoch)) != per_epoch:
            logger.warning(
                "the checkpoint's training loader had %s batches per epoch, this one has %d (another batch "
                "size, dataset or process count): the resumed run does not repeat the uninterrupted one",
                state.get("batches_per_epoch"),
                per_epoch,
            )
        epoch, batch = divmod(self.batches_done, per_epoch)
        self.sampler.resume_at(epoch, batch * int(self.batch_size or 1))
