"""The established tools as baselines (extra ``segquant[baselines]``): torchao, optimum-quanto and NVIDIA
ModelOpt, each with its own library defaults, on its CPU fake-quant / emulated path, fed the harness's
calibration batches where it takes any. A tool that is not installed is skipped with a message
(:meth:`Baseline.not_applicable`).

What each quantizes is the library's default: torchao only ``nn.Linear``; quanto and ModelOpt also
convolutions (quanto: ``nn.LayerNorm`` outputs too), which segquant and the paper baselines leave in full
precision; ModelOpt's defaults leave every layer named ``*proj_out*`` (the FLUX single-block output, the
final projection) in full precision. The table states it.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from segquant.baselines.baseline import Baseline
from segquant.calibration import run_batch


def _torchao_config(name: str) -> Any:
    import torch
    import torchao.quantization as tq

    if name == "w8a8":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if name == "w8a16":
        return tq.Int8WeightOnlyConfig()
    if name == "w4a16":  # Int4WeightOnlyConfig's CPU twin: its default group size 128, int4 symmetric
        return tq.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=tq.PerGroup(128))
    return tq.Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4)  # "w4a8": default group 32


_TORCHAO_GROUP = {"w4a16": 128, "w4a8": 32}  # the group sizes of the configs above


def torchao_quantize(model: nn.Module, _loader: Any, config: dict) -> nn.Module:
    """torchao ``quantize_`` with ``config["tool"]`` (no calibration: dynamic or weight-only). Group-wise
    configs skip linears whose input width is not a multiple of the group (torchao would fail on them);
    they stay in full precision, as torchao's own ``Int4WeightOnlyConfig`` leaves them."""
    from torchao.quantization import quantize_

    group = _TORCHAO_GROUP.get(config["tool"], 1)
    quantize_(model, _torchao_config(config["tool"]),
              filter_fn=lambda module, _fqn: isinstance(module, nn.Linear) and module.in_features % group == 0)
    return model


def quanto_quantize(model: nn.Module, loader: Any, config: dict) -> nn.Module:
    """optimum-quanto: ``quantize`` (weights ``config["weights"]``, activations qint8), ``Calibration`` on
    every calibration batch, ``freeze``."""
    import optimum.quanto as oq

    oq.quantize(model, weights=getattr(oq, config["weights"]), activations=oq.qint8)
    with oq.Calibration():
        for batch in loader:
            run_batch(model, batch)
    oq.freeze(model)
    return model


def modelopt_quantize(model: nn.Module, loader: Any, config: dict) -> nn.Module:
    """NVIDIA ModelOpt ``mtq.quantize`` with the named default config, the forward loop over every
    calibration batch."""
    import modelopt.torch.quantization as mtq

    def forward_loop(m: nn.Module) -> None:
        for batch in loader:
            run_batch(m, batch)

    return mtq.quantize(model, copy.deepcopy(getattr(mtq, config["tool"])), forward_loop=forward_loop)


def _tool(name: str, package: str, bits: str, granularity: str, description: str, transform, **config) -> Baseline:
    return Baseline(name, description.split(":")[0], bits, granularity, description, config, transform=transform,
                    requires=package)


TOOL_BASELINES = [
    _tool("torchao_w8a8", "torchao", "W8A8", "W int8 per-channel, A int8 dynamic per-token (linear only)",
          "torchao: Int8DynamicActivationInt8WeightConfig()", torchao_quantize, tool="w8a8"),
    _tool("torchao_w8a16", "torchao", "W8A16", "W int8 per-channel, A fp (linear only)",
          "torchao: Int8WeightOnlyConfig()", torchao_quantize, tool="w8a16"),
    _tool("torchao_w4a16", "torchao", "W4A16", "W int4 per-group(128), A fp (linear only)",
          "torchao: IntxWeightOnlyConfig(int4, PerGroup(128)), the CPU twin of Int4WeightOnlyConfig() "
          "(whose kernels need a GPU)", torchao_quantize, tool="w4a16"),
    _tool("torchao_w4a8", "torchao", "W4A8", "W int4 per-group(32), A int8 dynamic asymmetric per-token "
          "(linear only)", "torchao: Int8DynamicActivationIntxWeightConfig(weight_dtype=int4)", torchao_quantize,
          tool="w4a8"),
    _tool("quanto_w8a8", "optimum.quanto", "W8A8", "W int8 per-channel, A int8 static per-tensor (linear, conv, "
          "layernorm outputs)", "optimum-quanto: qint8 weights and activations, calibrated", quanto_quantize,
          weights="qint8"),
    _tool("quanto_w4a8", "optimum.quanto", "W4A8", "W int4 per-group(128), A int8 static per-tensor (linear, "
          "conv, layernorm outputs)", "optimum-quanto: qint4 weights, qint8 activations, calibrated",
          quanto_quantize, weights="qint4"),
    _tool("modelopt_int8_sq", "modelopt", "W8A8", "W int8 per-channel, A int8 static per-tensor, SmoothQuant "
          "(linear, conv; *proj_out* fp)", "ModelOpt: INT8_SMOOTHQUANT_CFG", modelopt_quantize,
          tool="INT8_SMOOTHQUANT_CFG"),
    _tool("modelopt_int8", "modelopt", "W8A8", "W int8 per-channel, A int8 static per-tensor (linear, conv; "
          "*proj_out* fp)", "ModelOpt: INT8_DEFAULT_CFG", modelopt_quantize, tool="INT8_DEFAULT_CFG"),
    _tool("modelopt_fp8", "modelopt", "W8A8 (FP8)", "W fp8 e4m3 per-tensor, A fp8 e4m3 static per-tensor "
          "(linear, conv; *proj_out* fp)", "ModelOpt: FP8_DEFAULT_CFG", modelopt_quantize, tool="FP8_DEFAULT_CFG"),
    _tool("modelopt_w4a8_awq", "modelopt", "W4A8", "W int4 per-group(128) AWQ, A fp8 e4m3 static per-tensor "
          "(linear, conv; *proj_out* fp)", "ModelOpt: W4A8_AWQ_BETA_CFG", modelopt_quantize, tool="W4A8_AWQ_BETA_CFG"),
]
