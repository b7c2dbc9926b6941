"""Terms combine in one run: every registered term (the kit's own and the peers') in one
``distill.losses`` list, trained end to end through ``msadkit.engine.train.trainer.train``."""

from __future__ import annotations

import pytest

from msadkit.config import load_config
from msadkit.distill.registry import TERMS
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict, save_atomic

# One entry per term (two for CWD: on the FPN maps and on the classification logits, under its own
# name). The teacher's FPN is wider than the student's: every feature term trains adapters, and
# CrossKD its channel adapters; the tiny heads have one tower conv, where CrossKD cuts.
LOSSES = (
    "[{type: fitnet}, {type: cwd}, {type: cwd, maps: logits, loss_weight: 5.0, name: loss_cwd_logits},"
    " {type: pkd}, {type: mgd}, {type: fgd}, {type: crosskd, reused_teacher_head_idx: 1, channel_adapter: true},"
    " {type: adl}, {type: gid}, {type: msad_feature, ramp_iters: 1}]"
)
# The loss keys each entry adds to metrics.jsonl.
KEYS = {
    "fitnet": {"loss_fitnet"},
    "cwd": {"loss_cwd", "loss_cwd_logits"},
    "pkd": {"loss_pkd"},
    "mgd": {"loss_mgd"},
    "fgd": {"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_attention", "loss_fgd_global"},
    "crosskd": {"loss_crosskd_cls", "loss_crosskd_reg"},
    "adl": {"loss_adl_cls"},
    "gid": {"loss_gid_feature", "loss_gid_relation", "loss_gid_response_cls", "loss_gid_response_reg"},
    "msad_feature": {"loss_msad_feature"},
}


def test_the_keys_cover_every_registered_term():
    assert set(KEYS) == set(TERMS)


@pytest.mark.parametrize(
    ("student_config", "teacher_config", "arch"),
    [
        ("adl/retinanet_adl_demo", "adl/retinanet_teacher_demo", "retinanet"),
        ("adl/fcos_adl_demo", "gid/fcos_teacher_demo", "fcos"),
    ],
)
def test_every_term_in_one_run_through_train(tmp_path, tiny_overrides, student_config, teacher_config, arch):
    teacher_cfg = load_config(
        teacher_config, tiny_overrides(tmp_path / "teacher", arch=arch) + ["model.fpn.out_channels=48"]
    )
    teacher = save_atomic({"model": build_model(teacher_cfg).state_dict(), "config": teacher_cfg}, tmp_path / "t.pth")
    run = tmp_path / "student"
    config = load_config(
        student_config, tiny_overrides(run, arch=arch) + [f"distill.teacher={teacher}", f"distill.losses={LOSSES}"]
    )
    assert [entry["type"] for entry in config["distill"]["losses"]].count("cwd") == 2
    assert train(config, evaluate=False) == run
    records = read_metrics(run / "metrics.jsonl")
    assert [record["iter"] for record in records] == [1, 2]
    expected = set().union(*KEYS.values())
    for record in records:
        missing = expected - set(record)
        assert not missing, f"loss keys missing from metrics.jsonl: {sorted(missing)}"
        # Finite: metrics.jsonl writes non-finite values as strings.
        assert all(isinstance(record[key], float) for key in expected), {key: record[key] for key in expected}
    # The terms' trainable parts are training state, not part of the student.
    final = load_checkpoint_file(run / "model_final.pth")["model"]
    load_state_dict_strict(build_model(config), final, "model_final.pth")
