"""Bytes of a quantized FLUX.1-dev or SD3.5-medium transformer on the GPU backend, buffer by buffer, without
building it whole.

Builds the model at full width with one block of each kind (random bf16 weights, CPU; FLUX.1-dev: a double-
and a single-stream block; SD3.5-medium: a block with dual attention, one without, and the last block, which
has no context FFN), quantizes it with a variant of ``e2e_w8a8.py``, packs the GPU layout (its tensors are
pure torch; the CUDA check is bypassed) and scales the per-block bytes to the full depth (FLUX 19 + 38; SD3.5
13 + 10 + 1). ``--bf16`` lists the unquantized model the same way:

    cd benchmarks && PYTHONPATH=.. python buffer_bytes.py --variant sq_w4a8_r32_2l     # ~5 min on 2 CPU cores
    cd benchmarks && PYTHONPATH=.. python buffer_bytes.py --model sd35 --variant sq_fp8 [--max-image-size 2048]
"""

from __future__ import annotations

import argparse
import collections
from unittest import mock

import torch

from e2e_w8a8 import VARIANTS, segquant_config
from fullsize import FLUX1_DEV, SD35_MEDIUM, flux_inputs, sd35_inputs

#: model -> (config with one block of each kind, example builder, block name prefix -> copies in the full model)
MODELS = {
    "flux": ({**FLUX1_DEV, "num_layers": 1, "num_single_layers": 1}, flux_inputs,
             {"transformer_blocks.": FLUX1_DEV["num_layers"],
              "single_transformer_blocks.": FLUX1_DEV["num_single_layers"]}),
    "sd35": ({**SD35_MEDIUM, "num_layers": 3, "dual_attention_layers": (0,)}, sd35_inputs,
             {"transformer_blocks.0.": len(SD35_MEDIUM["dual_attention_layers"]),
              "transformer_blocks.1.": SD35_MEDIUM["num_layers"] - len(SD35_MEDIUM["dual_attention_layers"]) - 1,
              "transformer_blocks.2.": 1}),  # the last block: no context FFN / output projection
}


def buffer_bytes(model_name: str, variant: str | None, max_image_size: int | None = None) -> dict[str, int]:
    """Buffer / parameter name (last component) -> bytes in the full-depth model (``variant`` None: bf16);
    ``max_image_size``: SD3's position table cropped to images of up to that many pixels
    (``segquant.crop_position_tables``, after quantization)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    import segquant.kernels.gpu.backend  # noqa: F401 (patched below)
    from segquant import crop_position_tables, quantize
    from segquant.kernels.backend import set_backend

    torch.manual_seed(0)
    config, inputs, copies = MODELS[model_name]
    cls = FluxTransformer2DModel if model_name == "flux" else SD3Transformer2DModel
    torch.set_default_dtype(torch.bfloat16)
    model = cls(**config).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    example = inputs(config, "cpu", torch.bfloat16, latent=32, text_tokens=16)
    if variant is not None:
        with torch.inference_mode():
            quantize(model, [example], segquant_config(variant), example=example)
            with mock.patch("segquant.kernels.gpu.backend._device_problem", return_value=None):
                set_backend(model, "gpu")
    if max_image_size is not None:
        crop_position_tables(model, max_image_size)
    totals: collections.Counter = collections.Counter()
    storages = set()  # a tensor shared by every layer (the unit row scales) counts once
    for name, tensor in (*model.named_buffers(remove_duplicate=False), *model.named_parameters()):
        if tensor.untyped_storage().data_ptr() in storages:
            continue
        storages.add(tensor.untyped_storage().data_ptr())
        times = next((count for prefix, count in copies.items() if name.startswith(prefix)), 1)
        totals[name.split(".")[-1]] += tensor.numel() * tensor.element_size() * times
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="flux", choices=list(MODELS))
    parser.add_argument("--variant", default="sq_w4a8_r32_2l", choices=[v for v in VARIANTS if v.startswith("sq_")])
    parser.add_argument("--bf16", action="store_true", help="the unquantized bf16 model instead")
    parser.add_argument("--max-image-size", type=int, default=None,
                        help="crop SD3's position table to images of up to this many pixels (crop_position_tables)")
    args = parser.parse_args()
    totals = buffer_bytes(args.model, None if args.bf16 else args.variant, args.max_image_size)
    print("| tensor | GB |\n| --- | --- |")
    for name, size in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {size / 1e9:.4f} |")
    print(f"| total | {sum(totals.values()) / 1e9:.3f} |")


if __name__ == "__main__":
    main()
