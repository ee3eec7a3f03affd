"""Every test starts from the same random state, so no result depends on test order or luck."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
