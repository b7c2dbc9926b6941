"""A distillation student trained on two CPU processes (gloo DDP), for the realpaths DDP tests: each
rank dumps its distiller, step and DDP-wrapper membership when training ends."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from tests.child_process import TWO_CPU_PROCESSES, run_script
from tests.conftest import tiny_training_overrides

ITERATIONS = 3

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


def train_on_two_ranks(folder: Path, student_config: str, overrides: list[str], *, arch: str = "fcos") -> list[dict]:
    """Train ``student_config`` (tiny, ``arch``, then ``overrides``) for :data:`ITERATIONS` iterations
    on two processes into ``folder/student``, distilled from the teacher run ``folder/teacher``.

    Checks what every distillation run under DDP must give: the student in the DDP wrapper, the
    teacher outside it, nothing trainable left out of it, and the same state on both ranks.

    Returns:
        Each rank's dump (``wrapper``, ``state``, ``teacher_state``, ``teacher_params_in_wrapper``,
        ``teacher_training``, ``trainable_outside_wrapper``, ``step``).
    """
    student_overrides = tiny_training_overrides(folder / "student", max_iter=ITERATIONS, arch=arch) + [
        *overrides,
        f"distill.teacher={folder / 'teacher'}",
        *TWO_CPU_PROCESSES,
    ]
    run_script(SCRIPT, folder, str(folder), student_config, *student_overrides)
    ranks = [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]
    for rank in ranks:
        assert rank["wrapper"] == "DistributedDataParallel"
        assert rank["step"] == ITERATIONS
        assert rank["teacher_params_in_wrapper"] == 0
        assert rank["trainable_outside_wrapper"] == []
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0, msg=key)
    return ranks
