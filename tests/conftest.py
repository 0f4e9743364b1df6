"""Fixtures shared by the test modules that train or generate with the embedded model."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module: a 1M-parameter model gains nothing from more threads
    and loses a lot when the 2 cores are shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
