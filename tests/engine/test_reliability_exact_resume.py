"""A run interrupted after a checkpoint and resumed ends with the uninterrupted run's weights, bit for bit.

The fast test interrupts in-process (an exception after the checkpoint); the slow ones kill a real
training process with SIGKILL (data-loader workers, the SAD alternating loader, two-process DDP).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from msadkit.config import load_config
from msadkit.data.build import build_dataset
from msadkit.data.resumable_loader import ResumableSampler, SampleKey, SeededSamples
from msadkit.engine.semi_supervised.sad_loader import AlternatingSampler, build_train_loader
from msadkit.engine.train.exact_resume import capture_rng
from msadkit.engine.train.trainer import train
from msadkit.utils.checkpoint import load_checkpoint_file
from tests.engine.test_semi_supervised import write_pseudo_labels

# 8 training images in batches of 2: an epoch is 4 iterations.
MAX_ITER = 6


class Interrupted(RuntimeError):
    pass


class InterruptAt(L.Callback):
    """Stops the run before iteration ``step`` runs, after the checkpoint of ``step`` was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Interrupted(f"interrupted at {self.step}")


def final_state(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    return checkpoint["global_step"], checkpoint["state_dict"]


def assert_same_weights(uninterrupted: Path, resumed: Path) -> None:
    step_a, state_a = final_state(uninterrupted)
    step_b, state_b = final_state(resumed)
    assert step_a == step_b == MAX_ITER
    assert state_a.keys() == state_b.keys()
    differing = [key for key, value in state_a.items() if not torch.equal(value, state_b[key])]
    assert not differing, f"{len(differing)} of {len(state_a)} tensors differ, e.g. {differing[:5]}"


def overrides(tiny_overrides, run: Path, *extra: str) -> list[str]:
    # Horizontal flips and two short sides: augmentation that draws random numbers per image.
    return tiny_overrides(run, max_iter=MAX_ITER) + ["data.train_short_sides=[56,64]", "data.flip_prob=0.5", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.conftest import tiny_training_overrides

    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(load_config("fcos_demo", overrides(tiny_training_overrides, run)), evaluate=False)
    return run


@pytest.mark.parametrize("stop", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_repeats_the_uninterrupted_one_bit_for_bit(tmp_path, tiny_overrides, uninterrupted, stop):
    run = tmp_path / "run"
    config = load_config("fcos_demo", overrides(tiny_overrides, run))
    with pytest.raises(Interrupted):
        train(config, callbacks=[InterruptAt(stop)], evaluate=False)
    assert final_state(run)[0] == stop
    train(load_config("fcos_demo", overrides(tiny_overrides, run)), resume=True, evaluate=False)
    assert_same_weights(uninterrupted, run)


def test_sampler_resumes_mid_epoch_with_the_same_indices_and_seeds():
    order = lambda epoch: list(range(10))[::-1] if epoch % 2 else list(range(10))  # noqa: E731
    full = ResumableSampler(order, 10, seed=3, rank=1, world_size=3)
    passes = [list(full) for _ in range(3)]
    assert len(passes[0]) == len(full) == 4  # ceil(10 / 3), padded with the head of the stream
    assert [key.index for key in passes[0]] == [1, 4, 7, 0]
    assert [key.index for key in passes[1]] == [8, 5, 2, 9]
    assert all(isinstance(key, SampleKey) for key in passes[0])
    # Every position has its own seed, and another epoch draws other seeds.
    assert len({key.seed for p in passes for key in p}) == 12
    resumed = ResumableSampler(order, 10, seed=3, rank=1, world_size=3)
    resumed.resume_at(1, 2)
    assert list(resumed) == passes[1][2:]
    assert list(resumed) == passes[2]  # the pass after the resumed one is the next epoch


def test_augmentation_does_not_depend_on_the_number_of_workers(tmp_path, tiny_overrides):
    config = load_config("fcos_demo", overrides(tiny_overrides, tmp_path / "run"))
    train_set = build_dataset(config, "train")
    epochs = {}
    for workers in (0, 2):
        config["data"]["num_workers"] = workers
        loader = build_train_loader(config, train_set)
        epochs[workers] = [batch for _ in range(2) for batch in loader]
    assert len(epochs[0]) == 8
    for single, multi in zip(epochs[0], epochs[2]):
        assert torch.equal(single.images, multi.images)
        assert [t["image_id"] for t in single.targets] == [t["image_id"] for t in multi.targets]
        for a, b in zip(single.targets, multi.targets):
            assert torch.equal(a["boxes"], b["boxes"])
    # Random short sides and flips did happen: an image looks different in the two epochs.
    versions: dict[int, set[bytes]] = {}
    for batch in epochs[0]:
        for image, target in zip(batch.images, batch.targets):
            versions.setdefault(target["image_id"], set()).add(image.numpy().tobytes())
    assert any(len(v) > 1 for v in versions.values())


def test_seeded_samples_leave_the_callers_generators_as_they_were():
    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return random.random(), float(np.random.rand()), float(torch.rand(()))

    before = capture_rng()
    seeded = SeededSamples(Draws())
    first = seeded[SampleKey(1, 99)]
    assert seeded[SampleKey(3, 99)] == first  # the seed decides, not the index or the call
    assert seeded[SampleKey(1, 100)] != first
    after = capture_rng()
    assert after["python"] == before["python"]
    assert torch.equal(after["torch"], before["torch"])
    assert torch.equal(after["numpy"][1], before["numpy"][1]) and after["numpy"][2] == before["numpy"][2]


def test_sharded_alternating_stream_keeps_whole_labeled_and_mixed_batches():
    alternating = AlternatingSampler(20, 9, 2, seed=0, world_size=2)
    shards = [
        [key.index for key in ResumableSampler(alternating.epoch_stream, len(alternating), seed=0, rank=r, world_size=2)]
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(alternating) // 2
    for rank_stream in shards:
        batches = [rank_stream[i : i + 2] for i in range(0, len(rank_stream), 2)]
        assert all(i < 20 for batch in batches[0::2] for i in batch)  # even batches: labeled only
    # Together the two processes draw each global batch exactly once.
    merged = [index for pair in zip(*shards) for index in pair]
    assert merged == alternating.epoch_stream(0)


# Real processes killed with SIGKILL --------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    from msadkit.config import load_config
    from msadkit.engine.train.trainer import train

    kill_at, resume = int(sys.argv[1]), sys.argv[2] == "resume"


    class KillAt(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == kill_at and trainer.is_global_zero:
                os.kill(os.getpid(), signal.SIGKILL)


    train(load_config("fcos_demo", sys.argv[3:]), resume=resume, callbacks=[KillAt()], evaluate=False)
    """
)


def run_script(tmp_path: Path, kill_at: int, resume: bool, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "train_and_kill.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(script), str(kill_at), "resume" if resume else "fresh", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
        # Rank 0 is killed, the other DDP rank is left to its launcher's process group: end it too.
        start_new_session=True,
    )


def kill_and_resume(tmp_path: Path, args_for) -> None:
    """Uninterrupted run ``a``; run ``b`` killed before iteration 3 (after its checkpoint), then resumed."""
    done = run_script(tmp_path, -1, False, args_for(tmp_path / "a"))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run_script(tmp_path, 3, False, args_for(tmp_path / "b"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert final_state(tmp_path / "b")[0] == 3
    resumed = run_script(tmp_path, -1, True, args_for(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    assert_same_weights(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_killed_run_with_two_loader_workers_resumes_exactly(tmp_path, tiny_overrides):
    kill_and_resume(tmp_path, lambda run: overrides(tiny_overrides, run, "data.num_workers=2"))


@pytest.mark.slow
def test_killed_run_with_the_sad_alternating_loader_resumes_exactly(tmp_path, tiny_overrides):
    pseudo = tmp_path / "pseudo.json"
    base = overrides(tiny_overrides, tmp_path / "x", "data.synthetic.num_unlabeled=6")
    write_pseudo_labels(load_config("fcos_demo", base), pseudo)
    kill_and_resume(
        tmp_path,
        lambda run: overrides(
            tiny_overrides, run, "data.synthetic.num_unlabeled=6", f"data.pseudo_labels_json={pseudo}"
        ),
    )


@pytest.mark.slow
def test_killed_two_process_ddp_run_resumes_exactly(tmp_path, tiny_overrides):
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.synthetic.num_train=16"]
    kill_and_resume(tmp_path, lambda run: overrides(tiny_overrides, run, *ddp))
