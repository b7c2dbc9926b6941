"""The README's two-machine command, run as two processes on this machine (one CPU device each).

``MASTER_ADDR=127.0.0.1 MASTER_PORT=<p> NODE_RANK=<0|1> msadkit train ... trainer.num_nodes=2``:
Lightning's environment reads those variables exactly as on two hosts; gloo carries the gradients.
Both ranks must end with identical weights, for the MSAD teacher and for its distilled student.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_training_overrides

pytestmark = pytest.mark.slow  # two 2-process trainings: 1-2 minutes on two busy cores

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    import torch

    from msadkit.config import load_config
    from msadkit.engine.train.trainer import train

    out = Path(sys.argv[1])


    class DumpWeights(L.Callback):
        def on_train_end(self, trainer, pl_module):
            state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
            torch.save({"state": state, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
                        "step": trainer.global_step}, out / f"rank{trainer.global_rank}.pt")


    train(load_config(sys.argv[2], sys.argv[3:]), callbacks=[DumpWeights()], evaluate=False)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _train_on_two_nodes(tmp_path: Path, name: str, config: str, overrides: list[str]) -> list[dict]:
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "node_train.py"
    script.write_text(SCRIPT)
    port = _free_port()
    command = [sys.executable, str(script), str(out), config, *overrides,
               "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp"]
    nodes = []
    for node_rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node_rank),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        for inherited in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK"):
            env.pop(inherited, None)
        nodes.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node_rank, (node, output) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {node_rank} failed:\n{output[-3000:]}"
    return [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]


def _assert_identical(ranks: list[dict], steps: int) -> None:
    rank0, rank1 = ranks
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert (rank0["node_rank"], rank1["node_rank"]) == (0, 1)
    assert rank0["step"] == rank1["step"] == steps
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        torch.testing.assert_close(value, rank1["state"][key], rtol=0, atol=0, msg=key)


def test_two_nodes_train_the_msad_teacher_and_its_student_to_identical_weights(tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher_run"
    tiny = tiny_training_overrides(teacher_dir, max_iter=3, arch="msad_teacher") + [
        "model.num_classes=4",
        "data.size_divisibility=256",
        # Each node sees 2 of the 8 images per step, so the nodes get different batches.
        "data.synthetic.num_train=8",
    ]
    teacher = _train_on_two_nodes(tmp_path, "teacher", "msad/msad_teacher_demo", tiny)
    _assert_identical(teacher, steps=3)
    assert (teacher_dir / "model_final.pth").is_file()  # node 0 wrote the run folder

    student_dir = tmp_path / "student_run"
    student_overrides = [o for o in tiny if not o.startswith(("output_dir=", "model.arch="))] + [
        f"output_dir={student_dir}",
        f"distill.teacher={teacher_dir}",
    ]
    student = _train_on_two_nodes(tmp_path, "student", "msad/msad_student_demo", student_overrides)
    _assert_identical(student, steps=3)
    # The student started from the teacher's shared FCOS (detector.*) and trained away from it.
    final_teacher = torch.load(teacher_dir / "model_final.pth")["model"]
    # The trained module is the distiller: its student's keys are student.<detector key>.
    shared = {
        k: final_teacher[k.replace("student.", "detector.", 1)]
        for k in student[0]["state"]
        if k.startswith("student.") and k.replace("student.", "detector.", 1) in final_teacher
    }
    assert shared and any(not torch.equal(student[0]["state"][k], v) for k, v in shared.items() if v.is_floating_point())
