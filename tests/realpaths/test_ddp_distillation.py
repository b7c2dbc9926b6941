"""Two-process DDP (gloo, CPU) of distillation students: identical weights on both ranks, the teacher
outside the DDP wrapper and untouched, and the loss terms' trainable parts (adapters) in sync."""

import subprocess
import sys
import textwrap

import pytest
import torch

from msadkit.config import load_config
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic
from msadkit.utils.run_folder import write_run_config
from tests.conftest import tiny_training_overrides

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch

    from msadkit.config import load_config
    from msadkit.engine.train.trainer import train

    out = Path(sys.argv[1])


    class DumpRank(L.Callback):
        def on_train_end(self, trainer, pl_module):
            wrapper = trainer.strategy.model
            in_wrapper = {id(p) for p in wrapper.parameters()}
            distiller = pl_module.model
            teacher = distiller.teacher
            torch.save(
                {
                    "wrapper": type(wrapper).__name__,
                    "state": {k: v.detach().clone() for k, v in distiller.state_dict().items()},
                    "teacher_state": {k: v.detach().clone() for k, v in teacher.state_dict().items()},
                    "teacher_params_in_wrapper": sum(id(p) in in_wrapper for p in teacher.parameters()),
                    "teacher_training": teacher.training,
                    "trainable_outside_wrapper": [
                        n for n, p in distiller.named_parameters() if p.requires_grad and id(p) not in in_wrapper
                    ],
                    "step": trainer.global_step,
                },
                out / f"rank{trainer.global_rank}.pt",
            )


    config = load_config(sys.argv[2], sys.argv[3:])
    train(config, callbacks=[DumpRank()], evaluate=False)
    """
)

CASES = {
    # A student with a narrower FPN than its teacher: 1x1 adapters are trained beside it.
    "msad_with_adapters": ("msad/msad_teacher_demo", "msad/msad_student_demo", ["model.fpn.out_channels=16"]),
    "gid": ("gid/fcos_teacher_demo", "gid/fcos_gid_demo", ["model.fpn.out_channels=32"]),
}


def _teacher_run(folder, config_name):
    config = load_config(config_name, ["model.fpn.out_channels=32", "model.fcos.num_convs=1", f"output_dir={folder}"])
    torch.manual_seed(0)
    teacher = build_model(config)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.01 * torch.randn_like(param))
    write_run_config(folder, config)
    save_atomic({"model": teacher.state_dict(), "config": config}, folder / "model_final.pth")
    return teacher.state_dict()


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_process_distillation_keeps_the_ranks_identical_and_the_teacher_out_of_ddp(tmp_path, case):
    teacher_config, student_config, student_overrides = CASES[case]
    teacher_state = _teacher_run(tmp_path / "teacher", teacher_config)
    script = tmp_path / "ddp_distill.py"
    script.write_text(SCRIPT)
    overrides = tiny_training_overrides(tmp_path / "student", max_iter=3) + [
        "model.fcos.num_convs=1",
        *student_overrides,
        f"distill.teacher={tmp_path / 'teacher'}",
        "distill.init_student_from_teacher=false",
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
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank in ranks:
        assert rank["wrapper"] == "DistributedDataParallel"
        assert rank["step"] == 3
        assert rank["teacher_params_in_wrapper"] == 0
        assert rank["trainable_outside_wrapper"] == []
        assert rank["teacher_training"] is False
        assert not any("teacher" in key for key in rank["state"])
        # The frozen teacher is exactly the file it was loaded from.
        for key, value in teacher_state.items():
            torch.testing.assert_close(rank["teacher_state"][key], value, rtol=0, atol=0, msg=key)
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0, msg=key)
    if case == "msad_with_adapters":
        adapters = [k for k in ranks[0]["state"] if "adapters" in k]
        assert adapters, "a narrower student should train feature adapters"
