"""torchao's group-wise baselines skip linears whose input width is not a multiple of the group (they stay in
full precision, as torchao's own int4 weight-only config leaves them) instead of failing the whole model."""

import pytest
import torch
from torch import nn

pytest.importorskip("torchao")


def test_group_configs_skip_narrow_linears():
    from segquant.baselines.tools import torchao_quantize

    model = nn.Sequential(nn.Linear(4, 64), nn.Linear(64, 8))
    x = torch.randn(3, 4)
    torchao_quantize(model, None, {"tool": "w4a8"})
    assert type(model[0].weight) is nn.Parameter and model[0].weight.dtype == torch.float32
    assert type(model[1].weight) is not nn.Parameter  # a torchao tensor subclass
    assert model(x).shape == (3, 8)
