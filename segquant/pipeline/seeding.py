"""Seed what a pipeline draws from torch's *global* random number generator.

Passing ``generator=`` seeds the initial noise, but some stock pipelines also draw from the global
RNG: ``StableDiffusion3ControlNetPipeline`` samples the control image's VAE latent with
``latent_dist.sample()`` (no generator), so two full-precision runs with one seed differ (~14 dB
apart on SD3.5). :func:`seeded_global_rng` runs a pipeline call with the global CPU (and CUDA) RNG
seeded and restores the caller's RNG state afterwards::

    with seeded_global_rng(seed + i):
        pipe(..., generator=torch.Generator("cpu").manual_seed(seed + i))

Every fixed-seed call in segquant (``pipeline.generate``, calibration recording, the evaluation
harness, the affiner's passes) goes through it, so full precision and quantized runs see the same
draws.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Inside the block torch's global RNG (CPU and every visible CUDA device) starts from ``seed``;
    the state from before the block is restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
