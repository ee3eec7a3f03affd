"""Tiny-model tests run single-threaded: on a busy 2-core machine, intra-op threads make the
millisecond-sized ops of tiny pipelines ~30x slower (thread hand-offs dominate)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
