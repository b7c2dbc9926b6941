"""``trainer.compile``: torch.compile on the trained model's convolutional parts, in place."""

from __future__ import annotations

import shutil

import torch
from torch import nn

from msadkit.errors import ConfigError

__all__ = ["COMPILED_PARTS", "compile_toolchain_problem", "compile_trained_model"]

# The parts whose forward is pure tensor work on fixed-rank inputs. Target assignment, losses and
# post-processing stay eager: their shapes follow the number of boxes, which would recompile often.
COMPILED_PARTS = ("backbone", "head", "fusion")


def compile_toolchain_problem(device_type: str = "cpu") -> str | None:
    """Why torch.compile's default backend cannot build kernels here, or None when it can."""
    if device_type == "cpu":
        compiler = str(torch._inductor.config.cpp.cxx[0] or "g++") if hasattr(torch, "_inductor") else "g++"
        if shutil.which(compiler) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            return f"no C++ compiler found ({compiler}, g++ or clang++) for torch.compile's CPU kernels"
    return None


def compile_trained_model(model: nn.Module, *, device_type: str = "cpu") -> list[str]:
    """Compile the trained detector's backbone, heads and fusion modules in place.

    ``nn.Module.compile`` keeps module names, so checkpoints and ``state_dict`` keys are the same
    as eager. A distiller's student is compiled; its frozen teacher (run under no_grad, not a
    submodule) and the distillation terms stay eager.

    Args:
        model: a detector, MSAD teacher or distiller.
        device_type: where it will train, to check the toolchain for.

    Returns:
        The dotted names of the compiled modules.

    Raises:
        ConfigError: the toolchain torch.compile needs is missing.
    """
    problem = compile_toolchain_problem(device_type)
    if problem is not None:
        raise ConfigError(f"trainer.compile=true: {problem}; install one or set trainer.compile=false")
    trained = getattr(model, "student", model)
    names: list[str] = []
    for name, module in trained.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in COMPILED_PARTS and not any(name.startswith(done + ".") for done in names):
            module.compile()
            names.append(name)
    return names
