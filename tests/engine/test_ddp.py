"""Two-process DDP on CPU (gloo): both ranks train and end with identical weights."""

import textwrap

import torch

from tests.child_process import TWO_CPU_PROCESSES, run_script
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


    class DumpWeights(L.Callback):
        def on_train_end(self, trainer, pl_module):
            state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
            torch.save({"state": state, "world_size": trainer.world_size, "step": trainer.global_step},
                       out / f"rank{trainer.global_rank}.pt")


    config = load_config("fcos_demo", sys.argv[2:])
    train(config, callbacks=[DumpWeights()], evaluate=False)
    """
)


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    overrides = tiny_training_overrides(tmp_path / "run", max_iter=3) + [
        *TWO_CPU_PROCESSES,
        # Each rank sees 2 of the 8 images per step, so the ranks get different batches.
        "data.synthetic.num_train=8",
    ]
    run_script(SCRIPT, tmp_path, str(tmp_path), *overrides, timeout=300)
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["step"] == rank1["step"] == 3
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        torch.testing.assert_close(value, rank1["state"][key], rtol=0, atol=0, msg=key)
    # Rank 0 wrote the final weights after fit.
    assert (tmp_path / "run" / "model_final.pth").is_file()
