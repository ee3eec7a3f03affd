"""Sequential calibration: quantize block by block, each block calibrated on the outputs of the
already-quantized blocks before it (``calib: {sequential: true}``).

Plain calibration measures every layer's inputs in the full-precision model, so a layer's scales
ignore the error that the quantized layers before it add to its inputs. Sequentially, the errors are
calibrated where they occur. Blocks are found from module names: the layers under one numbered child
of a container (``transformer_blocks.3``, ``down_blocks.1``) form a block; other layers are their own
block. Blocks run in the order their first layer executes. Cost: one (early-stopped) pass over the
calibration data per block instead of one pass in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from segquant.calibration import calibrate, check_all_called, first_batch, is_one_shot, run_with_input_hooks
from segquant.conversion import convert
from segquant.errors import CalibrationError
from segquant.plan import QuantPlan

_NUMBERED = re.compile(r"^(.*?\.\d+)(\.|$)")


def block_of(layer_name: str) -> str:
    """The block a layer belongs to: the prefix up to its first numbered component, else the layer itself."""
    match = _NUMBERED.match(layer_name)
    return match.group(1) if match else layer_name


def execution_order(model: nn.Module, names: list[str], example: Any) -> list[str]:
    """The layers of ``names`` that run on ``example``, in the order each first runs."""
    first_call: dict[str, int] = {}
    run_with_input_hooks(model, names, example, lambda name, _x: first_call.setdefault(name, len(first_call)))
    return sorted(first_call, key=first_call.__getitem__)


def blocks_in_order(model: nn.Module, plan: QuantPlan, example: Any) -> list[tuple[str, list[str]]]:
    """``[(block name, [layer names])]`` in execution order; :class:`CalibrationError` (before any block is
    calibrated) naming the enabled layers that ``example`` does not reach."""
    names = [layer.name for layer in plan.enabled_layers()]
    order = execution_order(model, names, example)
    check_all_called(names, order)
    blocks: dict[str, list[str]] = {}
    for name in order:
        blocks.setdefault(block_of(name), []).append(name)
    return list(blocks.items())


def calibrate_and_convert_sequentially(model: nn.Module, plan: QuantPlan, calib_data_loader: Iterable,
                                       tmp_device: Any = None, verbose: bool = False,
                                       backend: str | None = None) -> nn.Module:
    """Calibrate and convert one block at a time (see module docstring); returns ``model``."""
    if is_one_shot(calib_data_loader):
        raise CalibrationError("sequential calibration passes over the calibration data once per block: give a "
                               "re-iterable loader (a list or a DataLoader), not a one-shot iterator or generator")
    modules = dict(model.named_modules())
    for block, names in tqdm(blocks_in_order(model, plan, first_batch(calib_data_loader)),
                             desc="sequential calibration", unit="block", disable=not verbose):
        stop_after = modules.get(block) if block not in names else None
        observers = calibrate(model, plan, calib_data_loader, tmp_device, layers=names, stop_after=stop_after)
        convert(model, plan, observers, tmp_device, layers=names, backend=backend)
    return model
