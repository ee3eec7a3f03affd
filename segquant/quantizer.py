"""``quantize()``: build the plan, calibrate, convert — the three steps, also callable one by one.

    plan = build_plan(model, config, example)          # what each linear layer becomes
    stats = calibrate(model, plan, calib_data_loader)  # running input statistics per layer
    convert(model, plan, stats)                        # nn.Linear -> SegLinear, in place
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from segquant.calibration import calibrate, first_batch, run_with_input_hooks
from segquant.config import QuantConfig, replace_config
from segquant.errors import BackendUnavailableError
from segquant.nn.quantize_layer import quantize_linear
from segquant.observers import InputObserver
from segquant.plan import LayerPlan, QuantPlan, build_plan

logger = logging.getLogger("segquant.quantizer")


def convert(model: nn.Module, plan: QuantPlan, observers: dict[str, InputObserver], tmp_device: Any = None,
            verbose: bool = False, layers: list[str] | None = None,
            report_inputs: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Replace every enabled ``nn.Linear`` of ``plan`` (or of ``layers``) by its ``SegLinear``, in place.

    Weight algorithms run on ``tmp_device`` when given; each ``SegLinear`` is placed on the device of
    the layer it replaces. With ``report_inputs`` (layer name -> an input ``(..., K)``), each layer's
    relative output error on that input is recorded and logged for plain round-to-nearest and for
    the plan (``layer.chosen["rtn_error"]``, ``layer.chosen["error"]``).
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
        if report_inputs and layer.name in report_inputs:
            _report_layer(linear, quantized, layer, observers[layer.name], report_inputs[layer.name], work_device)
        model.set_submodule(layer.name, quantized.to(linear.weight.device))
    return model


def _report_layer(linear: nn.Linear, quantized: nn.Module, layer: LayerPlan, stats: InputObserver,
                  x: torch.Tensor, device: torch.device) -> None:
    """Log the layer's relative output error: plain RTN (same formats, no SegQuant/algorithms) vs the plan."""
    rtn = quantize_linear(linear, rtn_variant(layer), stats, device)
    with torch.no_grad():
        x = x.to(device)
        bias = None if linear.bias is None else linear.bias.to(device)
        y = torch.nn.functional.linear(x, linear.weight.to(device), bias).float()
        for key, module in (("rtn_error", rtn), ("error", quantized)):
            layer.chosen[key] = float((module(x).float() - y).norm() / y.norm().clamp(min=1e-12))
    shown = {k: v for k, v in layer.chosen.items() if k not in ("alpha_search_errors", "rtn_error", "error")}
    logger.info("%-48s %-44s rel.err rtn %.2e -> %.2e %s", layer.name, layer.spec().describe(),
                layer.chosen["rtn_error"], layer.chosen["error"], shown)


def rtn_variant(layer: LayerPlan) -> LayerPlan:
    """The same layer and number formats with plain round-to-nearest: no segments, smoothing or GPTQ."""
    config = replace_config(layer.config, {"seglinear": False, "search_patterns": [], "opt": {"type": "default"},
                                           "calib": {"type": "amax"}}, layer.name)
    return replace(layer, config=config, output_segments=(), input_segments=(),
                   dual_scale_activation=None, patterns=(), chosen={})


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
    if verbose:
        show_log_messages()
    if example is None:
        example = first_batch(calib_data_loader)
    plan = build_plan(model, config, example)
    model.eval()
    if any(layer.config.calib.sequential for layer in plan.enabled_layers()):
        from segquant.sequential import calibrate_and_convert_sequentially

        calibrate_and_convert_sequentially(model, plan, calib_data_loader, tmp_device, verbose)
    else:
        observers = calibrate(model, plan, calib_data_loader, tmp_device, verbose)
        report_inputs = _layer_inputs(model, plan, example) if verbose else None
        convert(model, plan, observers, tmp_device, verbose, report_inputs=report_inputs)
    model.segquant_plan = plan
    return model


def show_log_messages() -> None:
    """Make segquant's INFO messages visible when the application has not configured logging."""
    root, package = logging.getLogger(), logging.getLogger("segquant")
    if not root.handlers and not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)


def _layer_inputs(model: nn.Module, plan: QuantPlan, example: Any) -> dict[str, torch.Tensor]:
    """The input of every enabled layer when ``model`` runs on ``example`` (for the verbose report)."""
    captured: dict[str, torch.Tensor] = {}
    run_with_input_hooks(model, [layer.name for layer in plan.enabled_layers()], example,
                         lambda name, x: captured.setdefault(name, x.detach()))
    return captured
