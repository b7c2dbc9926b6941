"""Shared test settings."""

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
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Generated datasets go to a per-session folder, never to the user's cache.
    monkeypatch.setenv("MSADKIT_CACHE", str(tmp_path_factory.getbasetemp() / "msadkit-cache"))
