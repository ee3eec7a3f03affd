"""Step 3 of ``quantize``: swap each planned ``nn.Linear`` for its ``SegLinear`` and pick its kernel backend.

    convert(model, plan, stats)                  # nn.Linear -> SegLinear, in place
    convert(model, plan, stats, backend="gpu")   # every layer on the GPU kernels

Per layer, the plan gives the typed inputs (``layer.spec()``, ``layer.settings()``),
:func:`segquant.nn.quantize_layer.quantize_linear` builds the module and a record of its choices, which
lands in ``layer.chosen`` (so the plan's table and JSON show it). The backend of a layer is the
``backend`` argument, else the layer config's ``backend`` key (``real_quant: true`` in a config means
``"gpu"``); every layer's backend is checked before any work starts. The verbose per-layer
report compares each layer's output error with plain round-to-nearest (:func:`rtn_variant`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from segquant.config import replace_config
from segquant.kernels.backend import Backend, attach, get_backend, set_backend
from segquant.nn.quantize_layer import quantize_linear
from segquant.nn.seglinear import SegLinear
from segquant.observers import InputObserver
from segquant.plan import LayerPlan, QuantPlan

logger = logging.getLogger("segquant.quantizer")


def layer_backend(layer: LayerPlan, backend: str | None = None) -> str:
    """The backend name of ``layer``: ``backend`` if given, else its config's (see module docstring)."""
    if backend is not None:
        return backend
    return layer.config.backend


def check_backends(model: nn.Module, layers: list[LayerPlan], backend: str | None = None) -> dict[str, Backend]:
    """The backend of every layer in ``layers``, each checked on an empty ``SegLinear`` where the layer is.

    Raises :class:`~segquant.errors.BackendUnavailableError` naming the first layer that cannot run.
    """
    chosen = {}
    for layer in layers:
        chosen[layer.name] = get_backend(layer_backend(layer, backend), layer=layer.name)
        if type(chosen[layer.name]).check is not Backend.check:  # only build a skeleton for real checks
            linear = model.get_submodule(layer.name)
            skeleton = SegLinear(layer.spec(), device=linear.weight.device, dtype=linear.weight.dtype)
            chosen[layer.name].check(skeleton, layer.name)
    return chosen


def convert(model: nn.Module, plan: QuantPlan, observers: dict[str, InputObserver], tmp_device: Any = None,
            verbose: bool = False, layers: list[str] | None = None,
            report_inputs: dict[str, torch.Tensor] | None = None, backend: str | None = None) -> nn.Module:
    """Replace every enabled ``nn.Linear`` of ``plan`` (or of ``layers``) by its ``SegLinear``, in place.

    Weight algorithms run on ``tmp_device`` when given; each ``SegLinear`` is placed on the device of
    the layer it replaces and runs on its backend (see module docstring). With ``report_inputs`` (layer
    name -> an input ``(..., K)``), each layer's relative output error on that input is recorded and
    logged for plain round-to-nearest and for the plan (``layer.chosen["rtn_error"]``, ``["error"]``).
    The plan is attached as ``model.segquant_plan`` (so ``save_quantized`` works after the three steps).
    """
    enabled = [layer for layer in plan.enabled_layers() if layers is None or layer.name in layers]
    backends = check_backends(model, enabled, backend)
    for layer in tqdm(enabled, desc="quantizing", unit="layer", disable=not verbose):
        linear = model.get_submodule(layer.name)
        work_device = torch.device(tmp_device) if tmp_device is not None else linear.weight.device
        stats = observers[layer.name]
        quantized, record = quantize_linear(linear, layer.spec(), layer.settings(), stats, work_device)
        layer.chosen.update(record.as_dict())
        if report_inputs and layer.name in report_inputs:
            layer.chosen.update(_report_errors(linear, quantized, layer, stats, report_inputs[layer.name],
                                               work_device))
            _log_layer(layer)
        quantized = quantized.to(linear.weight.device)
        attach(quantized, backends[layer.name])
        model.set_submodule(layer.name, quantized)
    model.segquant_plan = plan
    return model


def set_plan_backends(model: nn.Module, plan: QuantPlan, backend: str | None = None) -> nn.Module:
    """Put every ``SegLinear`` of a converted or loaded ``model`` on its backend (checked first)."""
    enabled = plan.enabled_layers()
    for name in sorted({layer_backend(layer, backend) for layer in enabled}):
        set_backend(model, name, layers=[layer.name for layer in enabled if layer_backend(layer, backend) == name])
    return model


def _report_errors(linear: nn.Linear, quantized: nn.Module, layer: LayerPlan, stats: InputObserver,
                   x: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Relative output errors on ``x``: plain RTN (same formats, no SegQuant/algorithms) and the plan."""
    rtn_layer = rtn_variant(layer)
    rtn, _record = quantize_linear(linear, rtn_layer.spec(), rtn_layer.settings(), stats, device)
    errors = {}
    with torch.no_grad():
        x = x.to(device)
        bias = None if linear.bias is None else linear.bias.to(device)
        y = torch.nn.functional.linear(x, linear.weight.to(device), bias).float()
        for key, module in (("rtn_error", rtn), ("error", quantized)):
            errors[key] = float((module(x).float() - y).norm() / y.norm().clamp(min=1e-12))
    return errors


def _log_layer(layer: LayerPlan) -> None:
    shown = {k: v for k, v in layer.chosen.items() if k not in ("alpha_search_errors", "rtn_error", "error")}
    logger.info("%-48s %-44s rel.err rtn %.2e -> %.2e %s", layer.name, layer.spec().describe(),
                layer.chosen["rtn_error"], layer.chosen["error"], shown)


def rtn_variant(layer: LayerPlan) -> LayerPlan:
    """The same layer and number formats with plain round-to-nearest: no segments, smoothing or GPTQ."""
    config = replace_config(layer.config, {"seglinear": False, "search_patterns": [], "opt": {"type": "default"},
                                           "calib": {"type": "amax"}}, layer.name)
    return replace(layer, config=config, output_segments=(), input_segments=(),
                   dual_scale_activation=None, patterns=(), chosen={})
