"""Checkpoint files: the atomic save, the checked read, and the strict load with its error text."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import pytest
import torch
import torch.serialization
from torch import nn

from msadkit.errors import CheckpointError
from msadkit.utils.checkpoint import (
    checkpoint_step,
    format_keys,
    key_problems,
    load_checkpoint_file,
    load_state_dict_strict,
    save_atomic,
)


@dataclass
class PickledSettings:
    """Stands for the Python objects a Lightning checkpoint holds beside its tensors."""

    learning_rate: float


_tag_storages_as_cuda = False


def _cuda_tag_while_pretending(storage):
    return "cuda:0" if _tag_storages_as_cuda else None


def _leave_restoring_to_torch(storage, location):
    return None


# Registered once for the session: the tagger answers only inside ``_saved_as_on_a_gpu``.
torch.serialization.register_package(1, _cuda_tag_while_pretending, _leave_restoring_to_torch)


@contextmanager
def _saved_as_on_a_gpu():
    """Make torch.save record every tensor as a ``cuda:0`` tensor, as a GPU training run writes them."""
    global _tag_storages_as_cuda
    _tag_storages_as_cuda = True
    try:
        yield
    finally:
        _tag_storages_as_cuda = False


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_checkpoint_written_on_a_gpu_is_read_onto_the_cpu(tmp_path, zip_format):
    # Without map_location="cpu" the tensors would go back to the GPU, or fail where there is none.
    path = tmp_path / "gpu.ckpt"
    with _saved_as_on_a_gpu():
        torch.save({"global_step": 5, "w": torch.ones(2)}, path, _use_new_zipfile_serialization=zip_format)
    # The file really is tagged for the GPU: a plain load needs one.
    with nullcontext() if torch.cuda.is_available() else pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=False)
    assert load_checkpoint_file(path)["w"].device.type == "cpu"
    assert checkpoint_step(path) == 5


def test_save_atomic_round_trips_and_returns_the_path(tmp_path):
    target = tmp_path / "new" / "model.pth"
    returned = save_atomic({"w": torch.arange(3.0)}, str(target))
    assert returned == target
    assert torch.equal(torch.load(target)["w"], torch.tensor([0.0, 1.0, 2.0]))


def test_load_checkpoint_file_reads_pickled_objects(tmp_path):
    # Safe loading (weights_only) refuses the dataclass; our own checkpoints need it.
    path = tmp_path / "run.ckpt"
    torch.save({"settings": PickledSettings(0.5), "w": torch.full((2,), 4.0)}, path)
    data = load_checkpoint_file(str(path))
    assert data["settings"] == PickledSettings(0.5)
    assert data["w"].tolist() == [4.0, 4.0]
    assert data["w"].device.type == "cpu"


def test_a_missing_checkpoint_file_is_named(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(CheckpointError, match=rf"^checkpoint file {path} does not exist$"):
        load_checkpoint_file(path)


def test_a_folder_is_not_a_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path)


def test_a_corrupt_checkpoint_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match=rf"^checkpoint file {path} cannot be read: ") as caught:
        load_checkpoint_file(path)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=rf"^checkpoint file {path} holds a list, expected a dict$"):
        load_checkpoint_file(path)


def test_format_keys_shows_ten_by_default_then_counts_the_rest():
    keys = [f"k{i}" for i in range(12)]
    assert format_keys(keys) == "k0, k1, k2, k3, k4, k5, k6, k7, k8, k9 and 2 more"
    assert format_keys(keys[:10]) == "k0, k1, k2, k3, k4, k5, k6, k7, k8, k9"
    assert format_keys(keys[:11], limit=3) == "k0, k1, k2 and 8 more"
    assert format_keys([]) == ""


def test_key_problems_sorts_each_list_and_keeps_the_order_missing_unexpected_shape():
    assert key_problems([], [], []) == []
    assert key_problems(["b", "a"], ["d", "c"], ["f (x)", "e (y)"]) == [
        "missing keys: a, b",
        "unexpected keys: c, d",
        "shape mismatch: e (y), f (x)",
    ]
    assert key_problems([], ["u"], []) == ["unexpected keys: u"]
    assert key_problems([], [], ["s (1)"]) == ["shape mismatch: s (1)"]
    many = [f"m{i:02d}" for i in range(11)]
    assert key_problems(list(reversed(many)), [], []) == [f"missing keys: {', '.join(many[:10])} and 1 more"]


def _two_layer_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))


def test_a_fitting_state_dict_is_loaded_into_every_tensor():
    model = _two_layer_model()
    weights = {k: torch.full_like(v, float(i + 1)) for i, (k, v) in enumerate(model.state_dict().items())}
    load_state_dict_strict(model, weights, "weights.pth")
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name])


def test_a_strict_load_names_missing_unexpected_and_misshapen_keys_and_changes_nothing():
    model = _two_layer_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = dict(model.state_dict())
    del weights["1.bias"]
    weights["0.weight"] = torch.zeros(4, 2)
    weights["extra.scale"] = torch.ones(1)
    weights["another.extra"] = torch.ones(1)
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strict(model, weights, "teacher.pth")
    assert str(caught.value) == (
        "checkpoint teacher.pth does not fit Sequential: missing keys: 1.bias; "
        "unexpected keys: another.extra, extra.scale; "
        "shape mismatch: 0.weight (checkpoint (4, 2), model (3, 2))"
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


@pytest.mark.parametrize("drop, extra", [("0.bias", None), (None, "head.weight")])
def test_a_single_missing_or_unexpected_key_is_an_error(drop, extra):
    model = _two_layer_model()
    weights = dict(model.state_dict())
    if drop:
        del weights[drop]
    if extra:
        weights[extra] = torch.ones(1)
    expected = f"missing keys: {drop}" if drop else f"unexpected keys: {extra}"
    with pytest.raises(CheckpointError, match=rf"^checkpoint w.pth does not fit Sequential: {expected}$"):
        load_state_dict_strict(model, weights, "w.pth")
