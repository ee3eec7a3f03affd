"""Bytes of a quantized FLUX.1-dev transformer on the GPU backend, buffer by buffer, without building it whole.

Builds FLUX.1-dev at full width with one double and one single block (random bf16 weights, CPU), quantizes
it with a variant of ``e2e_w8a8.py``, packs the GPU layout (its tensors are pure torch; the CUDA check is
bypassed) and scales the per-block bytes to 19 + 38 blocks:

    PYTHONPATH=. python benchmarks/buffer_bytes.py --variant sq_w4a8_r32_2l     # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import collections
from unittest import mock

import torch

from e2e_w8a8 import VARIANTS, segquant_config
from fullsize import FLUX1_DEV, flux_inputs

BLOCKS = {"transformer_blocks": FLUX1_DEV["num_layers"], "single_transformer_blocks": FLUX1_DEV["num_single_layers"]}


def buffer_bytes(variant: str) -> dict[str, int]:
    """Buffer / parameter name (last component) -> bytes in the full 19 + 38-block model."""
    from diffusers import FluxTransformer2DModel

    import segquant.kernels.gpu.backend  # noqa: F401 (patched below)
    from segquant import quantize
    from segquant.kernels.backend import set_backend

    torch.manual_seed(0)
    config = {**FLUX1_DEV, "num_layers": 1, "num_single_layers": 1}
    torch.set_default_dtype(torch.bfloat16)
    model = FluxTransformer2DModel(**config).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    example = flux_inputs(config, "cpu", torch.bfloat16, latent=32, text_tokens=16)
    with torch.inference_mode():
        quantize(model, [example], segquant_config(variant), example=example)
        with mock.patch("segquant.kernels.gpu.backend._device_problem", return_value=None):
            set_backend(model, "gpu")
    totals: collections.Counter = collections.Counter()
    for name, tensor in (*model.named_buffers(), *model.named_parameters()):
        totals[name.split(".")[-1]] += tensor.numel() * tensor.element_size() * BLOCKS.get(name.split(".")[0], 1)
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="sq_w4a8_r32_2l", choices=[v for v in VARIANTS if v.startswith("sq_")])
    totals = buffer_bytes(parser.parse_args().variant)
    print("| tensor | GB |\n| --- | --- |")
    for name, size in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {size / 1e9:.4f} |")
    print(f"| total | {sum(totals.values()) / 1e9:.3f} |")


if __name__ == "__main__":
    main()
