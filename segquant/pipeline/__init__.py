"""Diffusers pipeline integration: denoiser lookup and swap, fixed-seed generation, step location and
the ``stepper`` hook point. Imports no diffusers code (pipelines are duck-typed)."""

from segquant.pipeline.glue import (
    DENOISER_NAMES,
    find_denoisers,
    generate,
    get_denoiser,
    pipeline_call_kwargs,
    resolve_layer,
    swap_denoiser,
    swapped_denoiser,
)
from segquant.pipeline.stepper import Stepper, install_stepper
from segquant.pipeline.steps import StepInfo, locate_step

__all__ = [
    "DENOISER_NAMES",
    "StepInfo",
    "Stepper",
    "find_denoisers",
    "generate",
    "get_denoiser",
    "install_stepper",
    "locate_step",
    "pipeline_call_kwargs",
    "resolve_layer",
    "swap_denoiser",
    "swapped_denoiser",
]
