"""Where a model lives and how its inputs follow it: the one place calibration and graph capture share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (nested lists, tuples, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move_to(v, device) for v in value)
    return value
