"""Named, ready-made configs: :data:`PRESET_TABLE` is the one place where each is defined and described.

``get_preset(name)`` returns the validated :class:`~segquant.config_rules.QuantConfig`,
``preset_dict(name)`` an editable copy of its dict, and :data:`PRESETS` maps every name to its dict.
"""

from __future__ import annotations

import copy
from typing import Any

from segquant.config_rules import QuantConfig
from segquant.errors import ConfigError

_SMOOTH = {"type": "smooth", "alpha": 0.5}
_SVD = {"type": "svd", "alpha": 0.5, "low_rank": 32}
_INT8_STATIC = {"type": "int8", "granularity": "tensor", "dynamic": False}
_INT8_TENSOR = {"type": "int8", "granularity": "tensor"}
_INT4_GROUP = {"type": "int4", "granularity": "group", "group_size": 64}
_PLAIN = {"seglinear": False, "search_patterns": [], "opt": {"type": "default"}, "calib": {"type": "amax"}}

#: name -> (what it is, config dict).
PRESET_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "w8a8": ("SegQuant W8A8, the original's default: INT8 per-tensor weights and static per-tensor inputs, "
             "SmoothQuant alpha 0.5, AMAX, SegLinear on with all six patterns (DualScale).",
             {"default": {"opt": _SMOOTH, "calib": {"type": "amax"}, "input_quant": _INT8_STATIC,
                          "weight_quant": _INT8_TENSOR}}),
    "w8a8_search": ("w8a8 with the SmoothQuant alpha searched on 0.0, 0.1, ..., 1.0 per segment.",
                    {"default": {"opt": {**_SMOOTH, "search_alpha_config": {"enable": True, "min": 0.0, "max": 1.0,
                                                                            "step": 0.1}},
                                 "input_quant": _INT8_STATIC, "weight_quant": _INT8_TENSOR}}),
    "w8a8_fp8": ("SegQuant with FP8 E4M3 per-tensor weights and static per-tensor inputs.",
                 {"default": {"opt": _SMOOTH, "input_quant": {"type": "fpe4m3", "granularity": "tensor"},
                              "weight_quant": {"type": "fpe4m3", "granularity": "tensor"}}}),
    "w4a8": ("SegQuant W4A8: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT8 static "
             "per-tensor inputs.",
             {"default": {"opt": _SVD, "calib": {"type": "gptq"}, "input_quant": _INT8_STATIC,
                          "weight_quant": _INT4_GROUP}}),
    "w4a4": ("SegQuant W4A4: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT4 dynamic "
             "per-group(64) inputs.",
             {"default": {"opt": _SVD, "calib": {"type": "gptq"},
                          "input_quant": {**_INT4_GROUP, "dynamic": True}, "weight_quant": _INT4_GROUP}}),
    "w4a16": ("Weight-only INT4 per-group(64) (GPTQ), inputs not quantized.",
              {"default": {"opt": {"type": "default"}, "calib": {"type": "gptq"}, "input_quant": {"enable": False},
                           "weight_quant": _INT4_GROUP}}),
    "rtn_w8a8": ("Baseline: plain round-to-nearest W8A8 (INT8 per-tensor weights and static inputs, no segments, "
                 "no smoothing).",
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

