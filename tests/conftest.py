"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """``medseg train`` sets torch's process-wide thread count (``train.threads``); in-process runs
    in one test must not slow down or change the numerics of the next."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
