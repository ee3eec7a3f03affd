"""``quantize()``: build the plan, calibrate, convert — the three steps, also callable one by one.

    plan = build_plan(model, config, example)          # what each linear layer becomes
    stats = calibrate(model, plan, calib_data_loader)  # running input statistics per layer
    convert(model, plan, stats)                        # nn.Linear -> SegLinear, in place
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from segquant.calibration import calibrate, first_batch, model_device, run_batch
from segquant.config import QuantConfig
from segquant.errors import BackendUnavailableError
from segquant.nn.quantize_layer import quantize_linear
from segquant.observers import InputObserver
from segquant.plan import QuantPlan, build_plan

logger = logging.getLogger("segquant.quantizer")


def convert(model: nn.Module, plan: QuantPlan, observers: dict[str, InputObserver], tmp_device: Any = None,
            verbose: bool = False, layers: list[str] | None = None) -> nn.Module:
    """Replace every enabled ``nn.Linear`` of ``plan`` (or of ``layers``) by its ``SegLinear``, in place.

    Weight algorithms run on ``tmp_device`` when given; each ``SegLinear`` is placed on the device of
    the layer it replaces.
    """
    enabled = [layer for layer in plan.enabled_layers() if layers is None or layer.name in layers]
    real = [layer.name for layer in enabled if layer.config.real_quant]
    if real:
        raise BackendUnavailableError(f"real_quant: true (layers {real[:3]}...) needs the GPU kernels, which "
                                      "this version does not have; use real_quant: false (emulated)")
    for layer in tqdm(enabled, desc="quantizing", unit="layer", disable=not verbose):
        linear = model.get_submodule(layer.name)
        work_device = torch.device(tmp_device) if tmp_device is not None else linear.weight.device
        quantized = quantize_linear(linear, layer, observers[layer.name], work_device)
        model.set_submodule(layer.name, quantized.to(linear.weight.device))
    return model


def quantize(model: nn.Module, calib_data_loader: Iterable, config: "QuantConfig | dict | str | None" = None,
             tmp_device: Any = None, verbose: bool = False, example: Any = None) -> nn.Module:
    """Quantize ``model`` in place and return it.

    Args:
        model: any ``nn.Module``; its selected ``nn.Linear`` layers become ``SegLinear``.
        calib_data_loader: iterable of batches (Tensor, tuple of positional args, or kwargs dict).
        config: a config dict, YAML path, :class:`QuantConfig` or preset name; default preset ``"w8a8"``.
        tmp_device: device on which statistics and weight algorithms run (e.g. a GPU for a CPU model).
        verbose: progress bars and a per-layer report (output error before/after) on the log.
        example: input for graph capture (Tensor, tuple, or kwargs dict); default: the first batch.

    The plan that was used is attached as ``model.segquant_plan``.
    """
    if example is None:
        example = first_batch(calib_data_loader)
    plan = build_plan(model, config, example)
    model.eval()
    if any(layer.config.calib.sequential for layer in plan.enabled_layers()):
        from segquant.sequential import calibrate_and_convert_sequentially

        calibrate_and_convert_sequentially(model, plan, calib_data_loader, tmp_device, verbose)
    else:
        observers = calibrate(model, plan, calib_data_loader, tmp_device, verbose)
        if verbose:
            reference = _layer_outputs(model, plan, example)
        convert(model, plan, observers, tmp_device, verbose)
        if verbose:
            _report(model, plan, example, reference)
    model.segquant_plan = plan
    return model


def _layer_outputs(model: nn.Module, plan: QuantPlan, example: Any) -> dict[str, tuple[torch.Tensor, ...]]:
    """Input and output of every enabled layer on ``example`` (for the verbose before/after report)."""
    captured, handles = {}, []
    for layer in plan.enabled_layers():
        module = model.get_submodule(layer.name)
        handles.append(module.register_forward_hook(
            lambda _m, args, out, name=layer.name: captured.__setitem__(name, (args[0].detach(), out.detach()))))
    try:
        with torch.no_grad():
            run_batch(model, example)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _report(model: nn.Module, plan: QuantPlan, example: Any, reference: dict) -> None:
    """Log per layer what was chosen and its relative output error on the example's own inputs."""
    for layer in plan.enabled_layers():
        if layer.name not in reference:
            continue
        x, y = reference[layer.name]
        with torch.no_grad():
            y_hat = model.get_submodule(layer.name)(x)
        error = float((y_hat.float() - y.float()).norm() / y.float().norm().clamp(min=1e-12))
        layer.chosen["relative_output_error"] = error
        logger.info("%-50s %-40s rel.err %.2e %s", layer.name, layer.spec().describe(), error,
                    {k: v for k, v in layer.chosen.items() if k != "alpha_search_errors"})
    logger.info("model device %s: %d layers quantized", model_device(model), len(plan.enabled_layers()))
