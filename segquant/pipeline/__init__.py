"""Diffusers pipeline integration: denoiser lookup and swap, fixed-seed generation, step location,
the denoiser tap (every denoiser call with its step, inputs and output), the ``stepper`` hook point
built on it, and CUDA-graph replay of the denoiser. Imports no diffusers code (pipelines are duck-typed)."""

from segquant.pipeline.cuda_graph import capture_cuda_graphs, release_cuda_graphs
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
from segquant.pipeline.stepper import Stepper, install_stepper, remove_stepper
from segquant.pipeline.steps import StepInfo, locate_step
from segquant.pipeline.tap import DenoiserTap, TapCall, output_sample, replace_sample

__all__ = [
    "DENOISER_NAMES",
    "DenoiserTap",
    "StepInfo",
    "Stepper",
    "TapCall",
    "capture_cuda_graphs",
    "find_denoisers",
    "generate",
    "get_denoiser",
    "install_stepper",
    "locate_step",
    "output_sample",
    "pipeline_call_kwargs",
    "release_cuda_graphs",
    "remove_stepper",
    "replace_sample",
    "resolve_layer",
    "swap_denoiser",
    "swapped_denoiser",
]
