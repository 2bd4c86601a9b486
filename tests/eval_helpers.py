"""Shared by the end-to-end eval and sweep tests (import the fixture into the test module to use it)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """A private cache (proxy extractor, rendered emoji), offline hub, one thread (tiny models on a
    shared 2-core machine run several times faster without intra-op contention)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MADKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    patch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    patch.undo()
