"""Capture time and peak memory of ``find_layer_segments`` on a full-size SD3.5-medium transformer.

The model is built from the SD3.5-medium config (24 layers, 24 heads x 64, joint dim 4096, caption
projection 1536, pooled 2048, dual attention in layers 0-12, RMS qk-norm) with random weights; by
default under ``torch.device("meta")`` (no weight memory at all), with ``--device cpu`` as real fp32/bf16
weights. The example is a 1024x1024 image (latent 128x128, 16 channels), batch 2, 333 text tokens.

    PYTHONPATH=. python benchmarks/capture_cost.py [--device meta|cpu] [--dtype float32|bfloat16]

Prints wall time of the capture + matching, peak RSS of the process (ru_maxrss) before and after,
and a summary of the matched layers.
"""

from __future__ import annotations

import argparse
import collections
import logging
import resource
import time

import torch

from fullsize import SD35_MEDIUM


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="meta", choices=["meta", "cpu"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    opts = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from diffusers import SD3Transformer2DModel

    from segquant.graph import find_layer_segments

    dtype = getattr(torch, opts.dtype)
    t0 = time.perf_counter()
    with torch.device(opts.device):
        model = SD3Transformer2DModel(**SD35_MEDIUM)
    model = (model if dtype == torch.float32 else model.to(dtype)).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    example = dict(
        hidden_states=torch.randn(2, 16, 128, 128, dtype=dtype, device=opts.device),
        encoder_hidden_states=torch.randn(2, 333, 4096, dtype=dtype, device=opts.device),
        pooled_projections=torch.randn(2, 2048, dtype=dtype, device=opts.device),
        timestep=torch.tensor([500.0, 250.0], device=opts.device),
        return_dict=False,
    )
    rss_before = peak_rss_mib()
    t0 = time.perf_counter()
    segments = find_layer_segments(model, example)
    capture_s = time.perf_counter() - t0
    kinds = collections.Counter(p.value for s in segments.values() for p in s.matched)
    print(f"SD3.5-medium config, {n_params / 1e9:.2f} B params, device={opts.device}, dtype={opts.dtype}")
    print(f"build: {build_s:.1f} s; peak RSS before capture: {rss_before:.0f} MiB")
    print(f"find_layer_segments: {capture_s:.1f} s; peak RSS after: {peak_rss_mib():.0f} MiB")
    print(f"layers with segments: {len(segments)}; by pattern: {dict(sorted(kinds.items()))}")


if __name__ == "__main__":
    main()
