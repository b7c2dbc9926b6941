"""Small training setups shared by tests in several folders: notebook overrides and teacher run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from msadkit.config import load_config
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic
from msadkit.utils.run_folder import write_run_config


def tiny_notebook_overrides(*, num_train: int, num_val: int) -> list[str]:
    """Overrides that make a notebook's demo config train in seconds: ``num_train`` and ``num_val``
    64 px synthetic images in batches of 2, a 32-channel FPN and one tower conv (each test adds the
    logging, checkpoint and data-worker settings it is about)."""
    return [
        f"data.synthetic.num_train={num_train}",
        f"data.synthetic.num_val={num_val}",
        "data.synthetic.image_size=64",
        "data.train_short_sides=[64]",
        "data.train_max_size=64",
        "data.test_short_side=64",
        "data.test_max_size=64",
        "solver.batch_size=2",
        "model.fpn.out_channels=32",
        "model.fcos.num_convs=1",
    ]


def write_teacher_run(
    folder: Path, config_name: str, overrides: list[str], *, spread_batchnorm_statistics: bool = False
) -> dict[str, Any]:
    """A teacher run folder (``config.yaml`` + ``model_final.pth``) that distillation can load.

    The weights are the seed-0 initialisation nudged by noise, so that a student initialised from
    the teacher, or a teacher loaded wrongly, shows in the numbers. With
    ``spread_batchnorm_statistics`` the BN running variances are drawn from [0.5, 2] instead of 1,
    so that a teacher left in train mode would show too.

    Returns:
        The teacher's state dict, as saved.
    """
    config = load_config(config_name, [*overrides, f"output_dir={folder}"])
    torch.manual_seed(0)
    teacher = build_model(config)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.01 * torch.randn_like(param))
        if spread_batchnorm_statistics:
            for name, buffer in teacher.named_buffers():
                if name.endswith("running_var"):
                    buffer.uniform_(0.5, 2.0)
    write_run_config(folder, config)
    save_atomic({"model": teacher.state_dict(), "config": config}, folder / "model_final.pth")
    return teacher.state_dict()
