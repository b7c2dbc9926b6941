"""`msadkit check-weights`: the official slimmable multi-width layout, the four widths, the sha256."""

import hashlib

import pytest
import torch

from msadkit.cli import main
from tests.modeling.test_slimmable import make_official_state


@pytest.fixture(scope="module")
def official_state():
    """An official-format state dict (convs at full width, four BNs per norm layer), as released."""
    return make_official_state(0)


def _save(tmp_path, state, name="s_resnet50_0.25_0.5_0.75_1.0.pt"):
    path = tmp_path / name
    torch.save({"model": state, "last_epoch": 99}, path)
    return path


def test_an_official_layout_file_passes_and_prints_its_sha256(tmp_path, official_state, capsys):
    path = _save(tmp_path, official_state)
    assert main(["check-weights", str(path)]) == 0
    out = capsys.readouterr().out
    for width in ("0.25", "0.5 ", "0.75", "1.0 "):
        assert f"width {width}: ok" in out
    assert f"sha256: {hashlib.sha256(path.read_bytes()).hexdigest()}" in out
    assert f"tensors: {len(official_state)}" in out


def test_convolutions_stored_at_a_quarter_width_fail_the_wider_networks(tmp_path, capsys):
    path = _save(tmp_path, make_official_state(1, max_width=0.25))
    assert main(["check-weights", str(path)]) == 2
    captured = capsys.readouterr()
    assert "width 0.25: ok" in captured.out and "width 1.0 : FAILS" in captured.out
    assert "sha256: " in captured.out  # printed even for a bad file, to compare with a good copy
    error = captured.err.strip()
    assert len(error.splitlines()) == 1
    assert "fails at width(s) 0.5, 0.75, 1.0" in error and "features.0.0.weight" in error


def test_a_missing_batchnorm_of_one_width_fails_that_width_only(tmp_path, official_state, capsys):
    state = {k: v for k, v in official_state.items() if ".bn.2." not in k}  # index 2 is width 0.75
    assert main(["check-weights", str(_save(tmp_path, state))]) == 2
    out = capsys.readouterr().out
    assert "width 0.75: FAILS" in out
    assert all(f"width {w}: ok" in out for w in ("0.25", "0.5 ", "1.0 "))


def test_non_finite_values_fail(tmp_path, official_state, capsys):
    state = dict(official_state)
    state["module.features.3.body.3.weight"] = state["module.features.3.body.3.weight"].clone()
    state["module.features.3.body.3.weight"][0, 0, 0, 0] = float("nan")
    assert main(["check-weights", str(_save(tmp_path, state))]) == 2
    captured = capsys.readouterr()
    assert "non-finite values in: module.features.3.body.3.weight" in captured.out
    assert "NaN or infinity" in captured.err


def test_files_that_are_not_slimmable_checkpoints(tmp_path, capsys):
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "lightning.ckpt")
    assert main(["check-weights", str(tmp_path / "lightning.ckpt")]) == 2
    assert "no 'model' key" in capsys.readouterr().err
    assert main(["check-weights", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
