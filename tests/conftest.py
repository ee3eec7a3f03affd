"""Every test starts from the same random state, so no result depends on test order or luck.

Tests of tiny pipelines (tests/calib, tests/pipeline) run single-threaded: on a busy 2-core machine,
intra-op threads make the millisecond-sized ops of tiny pipelines ~30x slower (thread hand-offs dominate).
"""

import pytest
import torch

_SINGLE_THREAD_DIRS = ("calib", "pipeline", "affiner")


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_torch_thread_for_tiny_pipelines(request):
    if request.path.parent.name not in _SINGLE_THREAD_DIRS:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
