"""Named, ready-made configs: :data:`PRESET_TABLE` is the one place where each is defined and described.

``get_preset(name)`` returns the validated :class:`~segquant.config_rules.QuantConfig`,
``preset_dict(name)`` an editable copy of its dict, and :data:`PRESETS` maps every name to its dict.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

from segquant.config_rules import FUSED_FROM, QuantConfig
from segquant.errors import ConfigError

_SMOOTH = {"type": "smooth", "alpha": 0.5}
_SVD = {"type": "svd", "alpha": 0.5, "low_rank": 32}
_INT8_STATIC = {"type": "int8", "granularity": "tensor", "dynamic": False}
_INT8_TOKEN = {"type": "int8", "granularity": "token", "dynamic": True}
_INT8_TENSOR = {"type": "int8", "granularity": "tensor"}
_INT8_CHANNEL = {"type": "int8", "granularity": "channel"}
_INT4_GROUP = {"type": "int4", "granularity": "group", "group_size": 64}
_OUTPUT_SEGMENTS = ["linear_to_chunk", "linear_to_split"]  # segments the GPU kernel runs in one plain GEMM
_SEGMENTS = _OUTPUT_SEGMENTS + ["concat_to_linear", "stack_to_linear", "reshape_to_linear"]  # all but DualScale
#: diffusers ``FeedForward`` down-projections: compute-bound, where DualScale doubles the tensor-core work.
_FFN_DOWN = "*ff*.net.2"
#: The linears fed by the conditioning alone (time and pooled-text embeddings, AdaLN modulation): one row per image,
#: so on the GPU they read their weights once per call whatever the input format (weight-bound GEMVs).
_CONDITIONING = r"re:.*time.*|.*add_embedding.*|(.*\.)?norm\w*\.linear"
#: The attention q / k / v projections, one by one or fused (``fuse_projections``): diffusers' names, from
#: :data:`segquant.config_rules.FUSED_FROM`.
_ATTENTION_QKV = r"re:.*attn\d?\.(" + "|".join(sorted({*FUSED_FROM, *chain(*FUSED_FROM.values())})) + ")"
_PLAIN = {"seglinear": False, "search_patterns": [], "opt": {"type": "default"}, "calib": {"type": "amax"}}
_W8A8 = {"opt": _SMOOTH, "calib": {"type": "amax"}, "input_quant": _INT8_TOKEN, "weight_quant": _INT8_CHANNEL}

# The W8A8 presets were chosen by measurement on the three demo models (image PSNR vs full precision, MMDiT / FLUX /
# UNet; BENCHMARKS.md "Choosing the W8A8 presets", one run of the current code, 2026-12-05): w8a8 39.83 / 42.68 / 51.54
# dB, w8a8_fast 38.33 / 42.80 / 51.74, rtn_w8a8 36.57 / 39.98 / 50.70, w8a8_static 35.96 / 38.08 / 46.95, w8a8_original
# 34.44 / 36.67 / 47.14; w8a8_fp8 30.03 / 32.77 / 40.52 (the run of its last change). Each of w8a8_fp8's choices was
# paired against the alternative: per-tensor weights (no measurable PSNR cost; one scale per product runs cuBLASLt's
# tensor-wise GEMM, 6-11 % faster than the row-wise one, BENCHMARKS.md "Run 17"), the conditioning linears in INT8
# dynamic per-token (+1.16 ± 0.28 dB on the MMDiT) and the attention q / k / v in INT8 static (+2.50 ± 0.31 / +2.94 ±
# 0.26 / +0.53 ± 0.25 dB); no smoothing, a searched alpha and per-token FP8 inputs were no better (BENCHMARKS.md
# "w8a8_fp8 against other FP8 configurations", "Where FP8's gap comes from").
# w4a8_two_level folds its static input-segment scales (2026-12-04, BENCHMARKS.md "Folding static segment scales"):
# 30.93 / 30.62 / 39.12 dB against 30.65 / 30.49 / 39.92 unfolded (30 images; +0.28, +0.13, -0.80 dB paired), so that
# every large layer runs as a plain INT8 GEMM on the GPU instead of a per-K-tile scaled one; and it has no DualScale on
# the compute-bound FFN down-projections, where it bought nothing (+0.08 / -0.10 / +0.07 dB, standard errors 0.11-0.15;
# "A W4A8 preset that runs as it was timed") and would double the tensor-core work off the two-level INT8 path.
#: name -> (what it is, config dict).
PRESET_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "w8a8": ("SegQuant W8A8, the best measured: INT8 per-channel weights, dynamic per-token INT8 inputs, "
             "SmoothQuant alpha 0.5 per segment, AMAX, SegLinear with all six patterns (DualScale).",
             {"default": _W8A8}),
    "w8a8_fast": ("w8a8 with output segments (linear_to_chunk / linear_to_split) and DualScale only where it is "
                  "cheap (activation-fed layers except the FFN down-projections: AdaLN and time embeddings, "
                  "weight-bound on the GPU): each large layer is one plain 8-bit GEMM; 1.5 dB below w8a8 on the "
                  "MMDiT demo, level on FLUX and the UNet.",
                  {"default": {**_W8A8, "search_patterns": _OUTPUT_SEGMENTS + ["activation_to_linear"]},
                   _FFN_DOWN: {"search_patterns": _OUTPUT_SEGMENTS}}),
    "w8a8_static": ("w8a8 with output segments only and static per-tensor inputs (no per-call scale): the "
                    "cheapest activation quantization, about 4-5 dB below w8a8.",
                    {"default": {**_W8A8, "search_patterns": _OUTPUT_SEGMENTS, "input_quant": _INT8_STATIC}}),
    "w8a8_original": ("The original SegQuant's W8A8 default: INT8 per-tensor weights and static per-tensor "
                      "inputs, SmoothQuant alpha 0.5, AMAX, all six patterns.",
                      {"default": {**_W8A8, "input_quant": _INT8_STATIC, "weight_quant": _INT8_TENSOR}}),
    "w8a8_search": ("w8a8 with the SmoothQuant alpha searched on 0.0, 0.1, ..., 1.0 per segment.",
                    {"default": {**_W8A8, "opt": {**_SMOOTH, "search_alpha_config": {
                        "enable": True, "min": 0.0, "max": 1.0, "step": 0.1}}}}),
    "w8a8_fp8": ("FP8 E4M3 per-tensor weights and static per-tensor inputs, output segments (the GPU's FP8 "
                 "tensor cores, one scale per product: cuBLASLt's tensor-wise GEMM); the attention q / k / v "
                 "projections in INT8 (static per-tensor inputs, per-channel weights) and the conditioning linears "
                 "(time / pooled-text embeddings, AdaLN; one row per image) in INT8 dynamic per-token. E4M3's 3 "
                 "mantissa bits cost 10-11 dB against w8a8 on the demo models.",
                 {"default": {**_W8A8, "search_patterns": _OUTPUT_SEGMENTS,
                              "input_quant": {"type": "fpe4m3", "granularity": "tensor", "dynamic": False},
                              "weight_quant": {"type": "fpe4m3", "granularity": "tensor"}},
                  _ATTENTION_QKV: {"input_quant": _INT8_STATIC, "weight_quant": _INT8_CHANNEL},
                  _CONDITIONING: {"input_quant": _INT8_TOKEN, "weight_quant": _INT8_CHANNEL}}),
    "w4a8": ("SegQuant W4A8: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT8 static "
             "per-tensor inputs.",
             {"default": {"opt": _SVD, "calib": {"type": "gptq"}, "input_quant": _INT8_STATIC,
                          "weight_quant": _INT4_GROUP}}),
    "w4a8_two_level": ("w4a8 with two-level group scales: every group scale an integer multiple (1..16) of one "
                       "scale per output channel, the static scales of input segments (heads, cat parts) folded "
                       "into the smoothing, and no DualScale on the FFN down-projections, so the GPU runs every "
                       "large layer as a plain INT8 tensor-core GEMM.",
                       {"default": {"opt": _SVD, "calib": {"type": "gptq"},
                                    "input_quant": {**_INT8_STATIC, "fold_segments": True},
                                    "weight_quant": {**_INT4_GROUP, "two_level": True}},
                        _FFN_DOWN: {"search_patterns": _SEGMENTS}}),
    "w4a4": ("SegQuant W4A4: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT4 dynamic "
             "per-group(64) inputs.",
             {"default": {"opt": _SVD, "calib": {"type": "gptq"},
                          "input_quant": {**_INT4_GROUP, "dynamic": True}, "weight_quant": _INT4_GROUP}}),
    "w4a16": ("Weight-only INT4 per-group(64) (GPTQ), inputs not quantized.",
              {"default": {"opt": {"type": "default"}, "calib": {"type": "gptq"}, "input_quant": {"enable": False},
                           "weight_quant": _INT4_GROUP}}),
    "rtn_w8a8": ("Baseline: plain round-to-nearest W8A8 at w8a8's granularity (INT8 per-channel weights, dynamic "
                 "per-token inputs, no segments, no smoothing; the numerics of torchao's int8 dynamic "
                 "quantization).",
                 {"default": {**_PLAIN, "input_quant": _INT8_TOKEN, "weight_quant": _INT8_CHANNEL}}),
    "rtn_w8a8_static": ("Baseline: round-to-nearest INT8 per-tensor weights and static per-tensor inputs.",
                        {"default": {**_PLAIN, "input_quant": _INT8_STATIC, "weight_quant": _INT8_TENSOR}}),
    "rtn_w4a8": ("Baseline: round-to-nearest INT4 per-group(64) weights, INT8 static per-tensor inputs.",
                 {"default": {**_PLAIN, "input_quant": _INT8_STATIC, "weight_quant": _INT4_GROUP}}),
}

#: name -> config dict (read-only by convention: use :func:`preset_dict` for an editable copy).
PRESETS: dict[str, dict[str, Any]] = {name: config for name, (_, config) in PRESET_TABLE.items()}


def preset_dict(name: str) -> dict[str, Any]:
    """A fresh, editable copy of preset ``name`` as a plain config dict."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} does not exist; available: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def get_preset(name: str) -> QuantConfig:
    """The validated config of preset ``name`` (see :data:`PRESET_TABLE`)."""
    return QuantConfig.from_dict(preset_dict(name))

