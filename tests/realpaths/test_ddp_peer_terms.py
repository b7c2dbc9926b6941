"""The peer terms (FitNet, CWD, PKD, MGD, FGD, CrossKD) under two-process DDP (gloo, CPU): the run
finishes, every term's loss is finite, and both ranks end with the same student and the same
trainable term parts (adapters, generation blocks, GcBlocks), the teacher outside the wrapper."""

from __future__ import annotations

import pytest

from msadkit.engine.train.metrics_logger import read_metrics
from tests.realpaths.two_rank_distillation import ITERATIONS, train_on_two_ranks
from tests.tiny_runs import write_teacher_run

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


def _two_process_run(tmp_path, arch: str, terms: list[str]) -> list[dict]:
    teacher_config, student_config = DEMOS[arch]
    teacher = [f"model.arch={arch}", "model.fpn.out_channels=32", *TINY_HEAD]
    write_teacher_run(tmp_path / "teacher", teacher_config, teacher)
    losses = "[" + ", ".join(PEER_LOSSES[term] for term in terms) + "]"
    overrides = [*TINY_HEAD, "model.fpn.out_channels=16", f"distill.losses={losses}"]
    # The ranks' identical states and the teacher out of the wrapper are checked there.
    ranks = train_on_two_ranks(tmp_path, student_config, overrides, arch=arch)
    records = read_metrics(tmp_path / "student" / "metrics.jsonl")
    assert [record["iter"] for record in records] == list(range(1, ITERATIONS + 1))
    expected = set().union(*(LOSS_KEYS[term] for term in terms))
    for record in records:
        assert expected <= set(record), sorted(expected - set(record))
        # Finite (metrics.jsonl writes non-finite values as strings) and averaged over the ranks.
        assert all(isinstance(record[key], float) for key in expected), {key: record[key] for key in expected}
    for rank in ranks:
        # The frozen teacher is not in the state (FGD's trained teacher-side GcBlocks are, under
        # distill_losses.N.teacher_context).
        assert not any(key.startswith("teacher.") for key in rank["state"])
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
