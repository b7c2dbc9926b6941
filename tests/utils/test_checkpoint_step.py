"""Reading the step of a Lightning checkpoint: pickled Python objects, the legacy format, bad files."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msadkit.utils.checkpoint import checkpoint_step


@dataclass
class RecordedSettings:
    """Stands for the objects Lightning pickles into a checkpoint (hyper-parameters, loop states)."""

    learning_rate: float


def test_a_checkpoint_with_pickled_objects_gives_its_step(tmp_path):
    # torch.load's safe mode (weights_only) refuses such objects; the step must still be read.
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 7, "hyper_parameters": RecordedSettings(0.01), "state_dict": {"w": torch.ones(2)}}, path)
    assert checkpoint_step(path) == 7


def test_a_legacy_format_checkpoint_gives_its_step(tmp_path):
    # The legacy (non-zip) format cannot be memory-mapped, so it takes the second reading path.
    path = tmp_path / "old.ckpt"
    content = {"global_step": 3, "hyper_parameters": RecordedSettings(0.02), "state_dict": {"w": torch.ones(2)}}
    torch.save(content, path, _use_new_zipfile_serialization=False)
    assert checkpoint_step(path) == 3


def test_files_without_an_integer_step_give_none(tmp_path):
    cases = {
        "no_step": {"epoch": 1},
        "bool_step": {"global_step": True},
        "float_step": {"global_step": 2.0},
        "list": [1],
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / name)
        assert checkpoint_step(tmp_path / name) is None, name
    whole = tmp_path / "whole.ckpt"
    torch.save({"global_step": 5, "state_dict": {"w": torch.arange(1000.0)}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert checkpoint_step(cut) is None
    assert checkpoint_step(tmp_path / "missing.ckpt") is None
