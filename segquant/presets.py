"""Named, ready-made configs. ``get_preset(name)`` returns a validated :class:`QuantConfig`.

=============  ====================================================================================
name           what it is
=============  ====================================================================================
w8a8           SegQuant W8A8, the original's default: INT8 per-tensor weights and static per-tensor
               inputs, SmoothQuant alpha 0.5, AMAX, SegLinear on with all six patterns (DualScale).
w8a8_search    ``w8a8`` with the SmoothQuant alpha searched on 0.0, 0.1, ..., 1.0 per segment.
w8a8_fp8       SegQuant with FP8 E4M3 per-tensor weights and static per-tensor inputs.
w4a8           SegQuant W4A8: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT8 static
               per-tensor inputs.
w4a4           SegQuant W4A4: INT4 per-group(64) weights by GPTQ with a rank-32 SVD branch, INT4
               dynamic per-group(64) inputs.
w4a16          Weight-only INT4 per-group(64) (GPTQ), inputs not quantized.
rtn_w8a8       Baseline: plain round-to-nearest W8A8 (INT8 per-tensor weights and static inputs, no
               segments, no smoothing).
rtn_w4a8       Baseline: round-to-nearest INT4 per-group(64) weights, INT8 static per-tensor inputs.
=============  ====================================================================================
"""

from __future__ import annotations

import copy
from typing import Any

from segquant.config import QuantConfig
from segquant.errors import ConfigError

_SMOOTH = {"type": "smooth", "alpha": 0.5}
_SVD = {"type": "svd", "alpha": 0.5, "low_rank": 32}
_INT8_STATIC = {"type": "int8", "granularity": "tensor", "dynamic": False}
_INT4_GROUP = {"type": "int4", "granularity": "group", "group_size": 64}
_PLAIN = {"seglinear": False, "search_patterns": [], "opt": {"type": "default"}, "calib": {"type": "amax"}}

PRESETS: dict[str, dict[str, Any]] = {
    "w8a8": {"default": {"opt": _SMOOTH, "calib": {"type": "amax"}, "input_quant": _INT8_STATIC,
                         "weight_quant": {"type": "int8", "granularity": "tensor"}}},
    "w8a8_search": {"default": {"opt": {**_SMOOTH, "search_alpha_config": {"enable": True, "min": 0.0,
                                                                           "max": 1.0, "step": 0.1}},
                                "input_quant": _INT8_STATIC,
                                "weight_quant": {"type": "int8", "granularity": "tensor"}}},
    "w8a8_fp8": {"default": {"opt": _SMOOTH, "input_quant": {"type": "fpe4m3", "granularity": "tensor"},
                             "weight_quant": {"type": "fpe4m3", "granularity": "tensor"}}},
    "w4a8": {"default": {"opt": _SVD, "calib": {"type": "gptq"}, "input_quant": _INT8_STATIC,
                         "weight_quant": _INT4_GROUP}},
    "w4a4": {"default": {"opt": _SVD, "calib": {"type": "gptq"},
                         "input_quant": {"type": "int4", "granularity": "group", "group_size": 64,
                                         "dynamic": True},
                         "weight_quant": _INT4_GROUP}},
    "w4a16": {"default": {"opt": {"type": "default"}, "calib": {"type": "gptq"},
                          "input_quant": {"enable": False}, "weight_quant": _INT4_GROUP}},
    "rtn_w8a8": {"default": {**_PLAIN, "input_quant": _INT8_STATIC,
                             "weight_quant": {"type": "int8", "granularity": "tensor"}}},
    "rtn_w4a8": {"default": {**_PLAIN, "input_quant": _INT8_STATIC, "weight_quant": _INT4_GROUP}},
}


def get_preset(name: str) -> QuantConfig:
    """The validated config of preset ``name`` (see the module docstring for the list)."""
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} does not exist; available: {', '.join(PRESETS)}")
    return QuantConfig.from_dict(copy.deepcopy(PRESETS[name]))


def preset_dict(name: str) -> dict[str, Any]:
    """A fresh, editable copy of preset ``name`` as a plain config dict."""
    get_preset(name)
    return copy.deepcopy(PRESETS[name])
