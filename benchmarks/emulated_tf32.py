"""What TF32 operands in the emulated layers' float32 product would cost in demo image PSNR.

Run 10 (BENCHMARKS.md) found the gpu backend 0.28 dB closer to full precision than the emulated backend at W8A8 on
the GPU, while at W4A8 the two agree within 0.1 dB. One candidate cause: if the GPU's float32 matrix products ran
in TF32 (operands rounded to 10 mantissa bits), the emulated layer (dequantized operands, one float32 product)
would carry an extra error of ≈ 2^-11 per operand that the gpu backend's integer GEMM does not — small against
4-bit quantization error, not against 8-bit. This runs ``segquant demo``'s harness on the CPU twice with the same
prompts, seeds and calibration: once as it is, once with both operands of every quantized layer's product rounded
to TF32, and prints the paired PSNR difference per model and preset:

    python benchmarks/emulated_tf32.py --models flux,unet --presets w8a8 --per-class 30 --out /tmp/tf32

``--transform reverse_k`` changes the summation order instead (every quantized layer's product sums over K in
reverse: the same codes, scales and products, ``summation_order_floor.py``'s change): how far the demo PSNR moves
when two correct implementations differ in nothing but the order of a float32 sum — the question run 13's
``backend_gap.py`` left (the backends agree per layer to 2e-7, yet their denoiser outputs differ by 0.2–0.8 %).

Both transforms act on the emulated layers' float32 product of dequantized operands. Since 2026-12-05 INT8 x INT8
layers do not form one: they sum their codes' products exactly (``segquant.kernels.reference.integer_exact``), which
no summation order or TF32 rounding of 8-bit integers changes, so for those presets the two transforms leave the
images as they are. ``--transform float32_sums`` measures that change itself: INT8 x INT8 layers back on the float32
product of dequantized operands (the emulation before 2026-12-05) against the exact sums.

``--transform sigmoid_gelu`` computes the quantized denoiser's tanh-GELUs in their sigmoid form
(:func:`segquant.sigmoid_form_gelus`, after quantize, as the fast GPU model runs them): whether that change of float32
rounding moves the demo PSNR by more than the summation order does (models with tanh-GELUs: mmdit, flux).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # summation_order_floor, demo_backends
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from demo_backends import paired_difference  # noqa: E402
from summation_order_floor import transformed_operands  # noqa: E402


def to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits (to nearest, ties away from zero)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def sigmoid_form_after_quantize():
    """Inside the block, every model the harness quantizes has its tanh-GELUs in the sigmoid form afterwards."""
    import segquant.baselines.harness as harness
    from segquant import sigmoid_form_gelus

    quantize_entry = harness.quantize_entry

    def quantize_then_sigmoid_form(*args):
        model = quantize_entry(*args)
        sigmoid_form_gelus(model)
        return model

    with mock.patch.object(harness, "quantize_entry", quantize_then_sigmoid_form):
        yield


def float32_sums():
    """Inside the block, INT8 x INT8 layers are emulated as before 2026-12-05: one float32 product of the dequantized
    input and weight instead of the exact integer sums and the kernels' epilogue."""
    import segquant.kernels.reference as reference

    return mock.patch.object(reference, "integer_exact", lambda *args: False)


#: ``--transform`` choices: a context in which the harness runs (tf32 and reverse_k change both operands of every
#: emulated quantized layer's float32 product).
TRANSFORMS = {"tf32": lambda: transformed_operands(to_tf32),
              "reverse_k": lambda: transformed_operands(lambda t: t.flip(-1)),
              "sigmoid_gelu": sigmoid_form_after_quantize,
              "float32_sums": float32_sums}


def demo_psnr(settings: dict, out: Path, transform=None) -> dict:
    """``{(model, preset): per-image PSNR}`` of one harness run, inside the ``transform`` context or as it is."""
    from segquant.demo.cli import evaluate_demo_models

    with transform() if transform else contextlib.nullcontext():
        results = evaluate_demo_models(settings, out, progress=False)
    return {(model, row["config"]): row["psnr_per_image"] for model, result in results.items()
            for row in result.rows if "psnr_per_image" in row and row["config"] != "fp"}


def main() -> None:
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="flux,unet")
    parser.add_argument("--presets", default="w8a8,w4a8")
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--transform", choices=sorted(TRANSFORMS), default="tf32")
    opts = parser.parse_args()
    settings = demo_settings(build_parser().parse_args(
        ["demo", "--per-class", str(opts.per_class), "--steps", "10", "--no-fid", "--models", opts.models,
         "--presets", opts.presets]))
    exact = demo_psnr(settings, opts.out / "float32")
    rounded = demo_psnr(settings, opts.out / opts.transform, TRANSFORMS[opts.transform])
    print(f"| model | preset | images | PSNR as is | PSNR {opts.transform} | Δ dB | std. error of Δ |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, a in exact.items():
        delta, error = paired_difference(a, rounded[key])
        print(f"| {key[0]} | {key[1]} | {len(a)} | {statistics.mean(a):.3f} | {statistics.mean(rounded[key]):.3f} | "
              f"{delta:+.3f} | {error:.3f} |")


if __name__ == "__main__":
    main()
