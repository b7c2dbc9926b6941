"""Shared test settings."""

import importlib
import logging
import sys

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread_torch():
    # Tiny tensors run faster on one thread, and a loaded 2-core machine otherwise thrashes.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _log_handlers_to_current_stderr():
    # Lightning and torchmetrics attach stream handlers at import time; pytest swaps stderr per
    # test, so point every plain stream handler at the current one instead of a closed capture.
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stderr  # not setStream: it flushes the old, closed stream
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Generated datasets go to a per-session folder, never to the user's cache.
    monkeypatch.setenv("MSADKIT_CACHE", str(tmp_path_factory.getbasetemp() / "msadkit-cache"))


def tiny_training_overrides(output_dir, *, max_iter: int = 2, arch: str = "fcos") -> list[str]:
    """Overrides that make a packaged demo config train in seconds on 64 px synthetic images."""
    return [
        f"output_dir={output_dir}",
        f"model.arch={arch}",
        "model.fpn.out_channels=32",
        "model.fcos.num_convs=1",
        "model.retinanet.num_convs=1",
        "data.synthetic.num_train=8",
        "data.synthetic.num_val=4",
        "data.synthetic.image_size=64",
        "data.train_short_sides=[64]",
        "data.test_short_side=64",
        "data.train_max_size=64",
        "data.test_max_size=64",
        "data.num_workers=0",
        "solver.batch_size=2",
        f"solver.max_iter={max_iter}",
        "solver.warmup_iters=1",
        "solver.steps=[1000]",
        "trainer.checkpoint_period=1",
        "trainer.log_period=1",
        "trainer.eval_batch_size=4",
        "trainer.progress_bar=false",
    ]


@pytest.fixture
def tiny_overrides():
    """``tiny_training_overrides`` as a fixture (tests call it with their run folder)."""
    return tiny_training_overrides


def load_benchmark_script(name: str):
    """The module ``benchmarks/<name>.py``, imported as ``python -m benchmarks.<name>`` imports it."""
    return importlib.import_module(f"benchmarks.{name}")
