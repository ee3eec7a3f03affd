"""``quantize()``: build the plan, calibrate, convert — the three steps, also callable one by one.

    plan = build_plan(model, config, example)          # what each linear layer becomes   (segquant.plan)
    stats = calibrate(model, plan, calib_data_loader)  # running input statistics per layer (segquant.calibration)
    convert(model, plan, stats)                        # nn.Linear -> SegLinear, in place (segquant.conversion)

With ``calib: {sequential: true}`` the last two steps alternate block by block (segquant.sequential).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from segquant.calibration import calibrate, run_with_input_hooks, split_first_batch
from segquant.config import QuantConfig, as_quant_config
from segquant.conversion import check_backends, convert
from segquant.errors import AlreadyQuantizedError
from segquant.kernels.backend import seglinear_modules
from segquant.models.activations import refuse_sigmoid_form
from segquant.models.fusion import fused_config
from segquant.plan import QuantPlan, build_plan
from segquant.sequential import calibrate_and_convert_sequentially

__all__ = ["convert", "quantize", "show_log_messages"]


def quantize(model: nn.Module, calib_data_loader: Iterable, config: "QuantConfig | dict | str | None" = None,
             tmp_device: Any = None, verbose: bool = False, example: Any = None,
             backend: str | None = None) -> nn.Module:
    """Quantize ``model`` in place and return it.

    Args:
        model: any ``nn.Module``; its selected ``nn.Linear`` layers become ``SegLinear``.
        calib_data_loader: iterable of batches (Tensor, tuple of positional args, or kwargs dict).
        config: a config dict, YAML path, :class:`QuantConfig` or preset name; default preset ``"w8a8"``.
            With ``fuse_projections: true`` a diffusers denoiser's q / k / v projections are fused first, in
            place (:func:`segquant.fuse_projections`).
        tmp_device: device on which statistics and weight algorithms run (e.g. a GPU for a CPU model).
        verbose: progress bars and a per-layer report (output error before/after) on the log.
        example: input for graph capture (Tensor, tuple, or kwargs dict); default: the first batch.
        backend: kernel backend of every layer (``"emulated"``, ``"gpu"``); default: per layer from the
            config (``backend`` key, ``real_quant``), else ``"emulated"``. Checked before calibration.

    The plan that was used is attached as ``model.segquant_plan``.
    """
    if verbose:
        show_log_messages()
    _refuse_quantized(model)
    refuse_sigmoid_form(model)
    if example is None:
        example, calib_data_loader = split_first_batch(calib_data_loader)
    plan = build_plan(model, fused_config(model, as_quant_config(config), example), example)
    check_backends(model, plan.enabled_layers(), backend)
    model.eval()
    if any(layer.config.calib.sequential for layer in plan.enabled_layers()):
        calibrate_and_convert_sequentially(model, plan, calib_data_loader, tmp_device, verbose, backend)
    else:
        observers = calibrate(model, plan, calib_data_loader, tmp_device, verbose)
        report_inputs = _layer_inputs(model, plan, example) if verbose else None
        convert(model, plan, observers, tmp_device, verbose, report_inputs=report_inputs, backend=backend)
    model.segquant_plan = plan
    return model


def _refuse_quantized(model: nn.Module) -> None:
    """Quantizing twice would plan an empty model and lose the saved plan: refuse, naming a layer."""
    quantized = [name for name, _module in seglinear_modules(model)]
    if quantized:
        raise AlreadyQuantizedError(
            f"{type(model).__name__} is already quantized ({len(quantized)} SegLinear layers, e.g. {quantized[0]!r}); "
            "quantize the original model: reload it, or keep a copy.deepcopy() made before quantize()")


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
