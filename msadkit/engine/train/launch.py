"""Multi-device training from an interactive process, as a child ``msadkit train`` process.

Distributed training must not start inside a Jupyter kernel: DDP's process spawning fails there
(detectron2 #2861/#3360, Lightning #7550). :func:`launch_training` therefore runs
``python -m msadkit.cli train <config> trainer.devices=N trainer.strategy=ddp`` as a subprocess and
streams its output to the caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from msadkit.config import dump_config
from msadkit.errors import MsadkitError

__all__ = ["training_command", "launch_training"]


def training_command(
    config_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    devices: int,
    strategy: str = "ddp",
    resume: bool = False,
    evaluate: bool = True,
) -> list[str]:
    """The ``msadkit train`` command line a notebook launches for multi-device training."""
    command = [
        sys.executable,
        "-m",
        "msadkit.cli",
        "train",
        str(config_path),
        f"trainer.devices={int(devices)}",
        f"trainer.strategy={strategy}",
        "trainer.progress_bar=false",
        "--output-dir",
        str(output_dir),
    ]
    if resume:
        command.append("--resume")
    if not evaluate:
        command.append("--no-eval")
    return command


def launch_training(
    config: dict[str, Any],
    *,
    strategy: str | None = None,
    resume: bool = False,
    evaluate: bool = True,
    echo: Callable[[str], None] = print,
    env: dict[str, str] | None = None,
) -> Path:
    """Train ``config`` in a child ``msadkit train`` process and stream its output.

    The resolved config is written to a temporary YAML file that the child loads, so the child
    trains exactly what the notebook resolved. ``trainer.devices`` is taken from the config;
    ``strategy`` defaults to ``ddp`` for several devices and to the config's otherwise.

    Returns:
        The run folder.

    Raises:
        MsadkitError: the child exited with a non-zero status; the message holds the command and
            the last lines it printed.
    """
    run_dir = Path(config["output_dir"]).expanduser()
    devices = int(config["trainer"]["devices"])
    if strategy is None:
        strategy = "ddp" if devices > 1 else config["trainer"]["strategy"]
    tail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="msadkit-launch-") as folder:
        config_path = Path(folder) / "config.yaml"
        config_path.write_text(dump_config(config))
        command = training_command(
            config_path, run_dir, devices=devices, strategy=strategy, resume=resume, evaluate=evaluate
        )
        echo("launching: " + " ".join(command))
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **(env or {})},
        )
        assert process.stdout is not None
        for line in process.stdout:
            echo(line.rstrip("\n"))
            tail = (tail + [line.rstrip("\n")])[-20:]
        status = process.wait()
    if status != 0:
        last = "\n".join(tail)
        raise MsadkitError(f"training subprocess exited with status {status}: {' '.join(command)}\n{last}")
    return run_dir
