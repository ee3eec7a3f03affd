"""segquant: post-training quantization of diffusion models (SegQuant: SegLinear + DualScale).

The public API is imported lazily so that ``import segquant`` stays cheap (no diffusers, no triton,
no CUDA initialisation).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "quantize": "segquant.quantizer",
    "convert": "segquant.conversion",
    "set_backend": "segquant.kernels.backend",
    "available_backends": "segquant.kernels.backend",
    "calibrate": "segquant.calibration",
    "build_plan": "segquant.plan",
    "QuantPlan": "segquant.plan",
    "LayerPlan": "segquant.plan",
    "QuantConfig": "segquant.config",
    "PRESETS": "segquant.presets",
    "get_preset": "segquant.presets",
    "preset_dict": "segquant.presets",
    "save_quantized": "segquant.serialization",
    "load_quantized": "segquant.serialization",
    "fuse_projections": "segquant.models.fusion",
    "sigmoid_form_gelus": "segquant.models.activations",
    "crop_position_tables": "segquant.models.position",
    "SegLinear": "segquant.nn.seglinear",
    "DType": "segquant.enums",
    "Optimum": "segquant.enums",
    "Calibrate": "segquant.enums",
    "SegPattern": "segquant.enums",
    "generate_calibrate_set": "segquant.calib",
    "load_calibrate_set": "segquant.calib",
    "UniformSampler": "segquant.calib",
    "NormalSampler": "segquant.calib",
    "process_affiner": "segquant.affiner",
    "load_correction": "segquant.affiner",
    "save_correction": "segquant.affiner",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'segquant' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from segquant.affiner import load_correction, process_affiner, save_correction
    from segquant.calib import NormalSampler, UniformSampler, generate_calibrate_set, load_calibrate_set
    from segquant.calibration import calibrate
    from segquant.config import QuantConfig
    from segquant.enums import Calibrate, DType, Optimum, SegPattern
    from segquant.nn.seglinear import SegLinear
    from segquant.plan import LayerPlan, QuantPlan, build_plan
    from segquant.presets import PRESETS, get_preset, preset_dict
    from segquant.conversion import convert
    from segquant.kernels.backend import available_backends, set_backend
    from segquant.models.activations import sigmoid_form_gelus
    from segquant.models.fusion import fuse_projections
    from segquant.models.position import crop_position_tables
    from segquant.quantizer import quantize
    from segquant.serialization import load_quantized, save_quantized
