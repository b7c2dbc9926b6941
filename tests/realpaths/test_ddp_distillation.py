"""Two-process DDP (gloo, CPU) of distillation students: identical weights on both ranks, the teacher
outside the DDP wrapper and untouched, and the loss terms' trainable parts (adapters) in sync."""

import pytest
import torch

from tests.realpaths.two_rank_distillation import train_on_two_ranks
from tests.tiny_runs import write_teacher_run

CASES = {
    # A student with a narrower FPN than its teacher: 1x1 adapters are trained beside it.
    "msad_with_adapters": ("msad/msad_teacher_demo", "msad/msad_student_demo", ["model.fpn.out_channels=16"]),
    "gid": ("gid/fcos_teacher_demo", "gid/fcos_gid_demo", ["model.fpn.out_channels=32"]),
}
# The teachers of both cases: a 32-channel FPN and one tower conv.
TEACHER = ["model.fpn.out_channels=32", "model.fcos.num_convs=1"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_distillation_keeps_the_ranks_identical_and_the_teacher_out_of_ddp(tmp_path, case):
    teacher_config, student_config, student_overrides = CASES[case]
    teacher_state = write_teacher_run(tmp_path / "teacher", teacher_config, TEACHER)
    overrides = ["model.fcos.num_convs=1", *student_overrides, "distill.init_student_from_teacher=false"]
    # The ranks' identical states and the teacher out of the wrapper are checked there.
    ranks = train_on_two_ranks(tmp_path, student_config, overrides)
    for rank in ranks:
        assert rank["teacher_training"] is False
        assert not any("teacher" in key for key in rank["state"])
        # The frozen teacher is exactly the file it was loaded from.
        for key, value in teacher_state.items():
            torch.testing.assert_close(rank["teacher_state"][key], value, rtol=0, atol=0, msg=key)
    if case == "msad_with_adapters":
        adapters = [k for k in ranks[0]["state"] if "adapters" in k]
        assert adapters, "a narrower student should train feature adapters"
