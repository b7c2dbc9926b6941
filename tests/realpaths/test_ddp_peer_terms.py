"""The peer terms (FitNet, CWD, PKD, MGD, FGD, CrossKD) under two-process DDP (gloo, CPU): the run
finishes, every term's loss is finite, and both ranks end with the same student and the same
trainable term parts (adapters, generation blocks, GcBlocks), the teacher outside the wrapper."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from msadkit.config import load_config
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic
from msadkit.utils.run_folder import write_run_config
from tests.conftest import tiny_training_overrides

# The same two-process script (it dumps each rank's distiller, step and wrapper membership).
from tests.realpaths.test_ddp_distillation import SCRIPT

# The student's FPN (16 channels) is narrower than the teacher's (32): every feature term trains
# 1x1 adapters and CrossKD its channel adapters. The tiny heads have one tower conv, where CrossKD cuts.
PEER_LOSSES = {
    "fitnet": "{type: fitnet}",
    "cwd": "{type: cwd}",
    "pkd": "{type: pkd}",
    "mgd": "{type: mgd}",
    "fgd": "{type: fgd}",
    "crosskd": "{type: crosskd, reused_teacher_head_idx: 1, channel_adapter: true}",
}
LOSS_KEYS = {
    "fitnet": {"loss_fitnet"},
    "cwd": {"loss_cwd"},
    "pkd": {"loss_pkd"},
    "mgd": {"loss_mgd"},
    "fgd": {"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attention", "loss_fgd_global"},
    "crosskd": {"loss_crosskd_cls", "loss_crosskd_reg"},
}
# arch -> (teacher config, student config)
DEMOS = {
    "fcos": ("gid/fcos_teacher_demo", "adl/fcos_adl_demo"),
    "retinanet": ("adl/retinanet_teacher_demo", "adl/retinanet_adl_demo"),
}
TINY_HEAD = ["model.fcos.num_convs=1", "model.retinanet.num_convs=1"]


def _teacher_run(folder, config_name: str, arch: str) -> None:
    config = load_config(
        config_name, [f"model.arch={arch}", "model.fpn.out_channels=32", *TINY_HEAD, f"output_dir={folder}"]
    )
    torch.manual_seed(0)
    teacher = build_model(config)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.01 * torch.randn_like(param))
    write_run_config(folder, config)
    save_atomic({"model": teacher.state_dict(), "config": config}, folder / "model_final.pth")


def _two_process_run(tmp_path, arch: str, terms: list[str]) -> list[dict]:
    teacher_config, student_config = DEMOS[arch]
    _teacher_run(tmp_path / "teacher", teacher_config, arch)
    script = tmp_path / "ddp_peers.py"
    script.write_text(SCRIPT)
    losses = "[" + ", ".join(PEER_LOSSES[term] for term in terms) + "]"
    overrides = tiny_training_overrides(tmp_path / "student", max_iter=3, arch=arch) + [
        *TINY_HEAD,
        "model.fpn.out_channels=16",
        f"distill.teacher={tmp_path / 'teacher'}",
        f"distill.losses={losses}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), student_config, *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(tmp_path / "student" / "metrics.jsonl")
    assert [record["iter"] for record in records] == [1, 2, 3]
    expected = set().union(*(LOSS_KEYS[term] for term in terms))
    for record in records:
        assert expected <= set(record), sorted(expected - set(record))
        # Finite (metrics.jsonl writes non-finite values as strings) and averaged over the ranks.
        assert all(isinstance(record[key], float) for key in expected), {key: record[key] for key in expected}
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for rank in ranks:
        assert rank["wrapper"] == "DistributedDataParallel"
        assert rank["step"] == 3
        assert rank["teacher_params_in_wrapper"] == 0
        assert rank["trainable_outside_wrapper"] == []
        # The frozen teacher is not in the state (FGD's trained teacher-side GcBlocks are, under
        # distill_losses.N.teacher_context).
        assert not any(key.startswith("teacher.") for key in rank["state"])
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0, msg=key)
    return ranks


@pytest.mark.parametrize("arch", sorted(DEMOS))
def test_all_peer_terms_in_one_two_process_run_keep_the_ranks_identical(tmp_path, arch):
    ranks = _two_process_run(tmp_path, arch, list(PEER_LOSSES))
    state = ranks[0]["state"]
    # Each term's trainable part is in the synchronised state: adapters of FitNet, CWD, PKD, FGD,
    # MGD's generation blocks, FGD's GcBlocks, CrossKD's channel adapters.
    for index in range(len(PEER_LOSSES)):
        assert any(key.startswith(f"distill_losses.{index}.") for key in state), f"term {index} has no trained part"


@pytest.mark.slow
@pytest.mark.parametrize("term", sorted(PEER_LOSSES))
def test_each_peer_term_alone_in_a_two_process_run(tmp_path, term):
    _two_process_run(tmp_path, "retinanet", [term])
