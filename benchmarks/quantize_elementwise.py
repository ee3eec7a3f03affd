"""Where the activation quantizers' time goes: Inductor's fused GELU + quantize and norm + quantize kernels against
the bf16 kernels they replace, at SD3.5-medium and FLUX.1 shapes (issue 11).

Run 8's SD3.5 profile: the static FP8 model's GELU + quantize kernels take 1.85 ms where the bf16 model's GELU
takes 1.42 ms, although they write one byte per element instead of two (≈ 1.9 against 3.3 TB/s), and its norm +
quantize kernels 1.38 ms against 0.93. This times each fused kernel alone (compiled as in the model, CUDA-graph
replay, inputs rotated past L2), under Inductor's default heuristics and with its pointwise autotuning or
coordinate-descent tuning, next to a hand-written Triton quantizer (the bandwidth a plain cast reaches), and saves
Inductor's code of the default kernels. The dynamic per-token INT8 quantizers of the ``w8a8_fast`` / ``w8a8``
presets too (``amax`` over each row of the smoothed input, then the codes: Inductor splits a row wider than 1024
into a looped reduction and a second kernel that reads the row again; run 19 put 12 ms of a FLUX.1 forward there),
also under ``triton.multi_kernel`` (rows up to 16384 may stay in registers) and against a hand-written one-pass row
kernel:

    PYTHONPATH=. python benchmarks/quantize_elementwise.py --out OUT            # H200
    PYTHONPATH=. python benchmarks/quantize_elementwise.py --smoke              # CPU: the cases run and agree

Bytes per case: what the kernel must read and write (inputs, outputs; per-channel vectors are negligible).
Results: BENCHMARKS.md run 13 (``benchmarks/results/gpu_h200_20261204/call8/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from segquant.enums import DType  # noqa: E402
from segquant.kernels.quant import quantize_dynamic  # noqa: E402
from segquant.models.activations import gelu_tanh_sigmoid_form  # noqa: E402
from segquant.numerics import PerToken, quantize_static, scale_from_amax, to_codes  # noqa: E402

FP8 = DType.FP8E4M3
#: Inductor settings compared, each applied to every case (``torch._inductor.config`` names).
MODES = {"default": {}, "autotune_pointwise": {"max_autotune_pointwise": True},
         "coordinate_descent": {"coordinate_descent_tuning": True}, "multi_kernel": {"triton.multi_kernel": 1}}
#: (batch, tokens, width, ff width) of the image stream: SD3.5-medium 1024² batch 2, FLUX.1 1024² batch 1.
SHAPES = {"sd35": (2, 4096, 1536, 6144), "flux": (1, 4096, 3072, 12288)}
ROTATE = 4  # input copies the timed calls cycle through (each case's inputs together exceed L2)


def gelu(h):
    return F.gelu(h, approximate="tanh")


def gelu_sigmoid_quant(h, mul):
    """:func:`gelu_quant` with :func:`segquant.models.activations.gelu_tanh_sigmoid_form` (GELU + quantize without
    ``libdevice.tanh``, whose arithmetic bounds the tanh form's kernel)."""
    return quant(gelu_tanh_sigmoid_form(h), mul)


def gelu_quant(h, mul):
    """The FF down-projection's input: GELU of the up-projection's bf16 output, then the static quantizer."""
    return quant(gelu(h), mul)


def norm_mod(x, shift, scale):
    """AdaLayerNormZero's modulated norm: ``LN(x) (1 + scale) + shift`` ``(B, T, D)``, bf16."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


def norm_mod_quant(x, shift, scale, *muls):
    """The modulated norm quantized once per consumer (one per layer that reads it: q / k / v unfused -> three)."""
    rows = norm_mod(x, shift, scale).reshape(-1, x.shape[-1])
    return tuple(quantize_static(rows, mul, FP8) for mul in muls)


def dynamic_quant(rows, *smooths):
    """The dynamic per-token INT8 quantizer of each consumer (one smoothing vector ``(1, K)`` each):
    codes ``(1, M, K)`` int8 and scales ``(1, M, 1)`` per consumer, as the GPU backend computes them."""
    return tuple(quantize_dynamic(rows, lam, (rows.shape[-1],), DType.INT8, PerToken(), False)[:2] for lam in smooths)


def norm_mod_dynamic_quant(x, shift, scale, *smooths):
    """The modulated norm quantized per token once per consumer (``w8a8_fast``'s q / k / v: three)."""
    return dynamic_quant(norm_mod(x, shift, scale).reshape(-1, x.shape[-1]), *smooths)


def gelu_sigmoid_dynamic_quant(h, smooth):
    """The FF down-projection's input quantized per token (``w8a8_fast``'s FF down)."""
    return dynamic_quant(gelu_tanh_sigmoid_form(h).reshape(-1, h.shape[-1]), smooth)


def gelu_sigmoid_dynamic_quant_reciprocals(h, inverse_smooth):
    """:func:`gelu_sigmoid_dynamic_quant` with multiplications where the library divides (``x · (1/λ)``, then the
    codes ``v · (1/s)`` with one reciprocal per row): whether the two IEEE divisions per element bound the kernel
    (codes may differ by one step where a product rounds differently from the quotient)."""
    v = gelu_tanh_sigmoid_form(h).reshape(-1, h.shape[-1]).float() * inverse_smooth
    scale = scale_from_amax(v.abs().amax(dim=-1, keepdim=True), DType.INT8)
    return to_codes(v * (1.0 / scale), DType.INT8), scale


def quant(h, mul):
    """The quantizer alone (bf16 in, E4M3 out): the bandwidth reference of the cast."""
    return quantize_static(h.reshape(-1, h.shape[-1]), mul, FP8)


def cases(shape: tuple[int, int, int, int], device: str) -> dict:
    """name -> (function, argument tuples (``ROTATE`` copies), bytes read + written per call)."""
    batch, tokens, width, ff = shape
    rows = batch * tokens

    def bf16(*size):
        return [torch.randn(*size, device=device, dtype=torch.bfloat16) for _ in range(ROTATE)]

    def muls(k, n=1):
        return [torch.rand(1, k, device=device) + 0.5 for _ in range(n)]

    hidden, residual = bf16(batch, tokens, ff), bf16(batch, tokens, width)
    shift, scale = bf16(batch, width)[0], bf16(batch, width)[0]
    ff_mul, w_mul3 = muls(ff), muls(width, 3)
    per_token = 4 * rows  # one float32 scale per row
    return {  # the dynamic quantizers first: a run cut by its time limit keeps them
        "norm + dynamic INT8 x1": (norm_mod_dynamic_quant, [(x, shift, scale, w_mul3[0]) for x in residual],
                                   rows * width * 3 + per_token),
        "norm + dynamic INT8 x3": (norm_mod_dynamic_quant, [(x, shift, scale, *w_mul3) for x in residual],
                                   rows * width * 5 + 3 * per_token),
        "gelu (sigmoid form) + dynamic INT8": (gelu_sigmoid_dynamic_quant, [(h, ff_mul[0]) for h in hidden],
                                               rows * ff * 3 + per_token),
        "gelu (sigmoid form) + dynamic INT8, multiplications": (
            gelu_sigmoid_dynamic_quant_reciprocals, [(h, 1.0 / ff_mul[0]) for h in hidden], rows * ff * 3 + per_token),
        "gelu (bf16)": (gelu, [(h,) for h in hidden], rows * ff * 4),
        "gelu + quantize": (gelu_quant, [(h, ff_mul[0]) for h in hidden], rows * ff * 3),
        "gelu (sigmoid form) + quantize": (gelu_sigmoid_quant, [(h, ff_mul[0]) for h in hidden], rows * ff * 3),
        "quantize (ff width)": (quant, [(h, ff_mul[0]) for h in hidden], rows * ff * 3),
        "norm (bf16)": (norm_mod, [(x, shift, scale) for x in residual], rows * width * 4),
        "norm + quantize x1": (norm_mod_quant, [(x, shift, scale, w_mul3[0]) for x in residual], rows * width * 3),
        "norm + quantize x3": (norm_mod_quant, [(x, shift, scale, *w_mul3) for x in residual], rows * width * 5),
    }


def timed_us(fn, arg_sets: list[tuple]) -> float:
    """Mean µs of one call, replayed from a CUDA graph whose captured calls cycle through ``arg_sets`` (the
    autotuners' timing, :func:`segquant.kernels.gpu.triton_gemm.graph_timed`)."""
    from segquant.kernels.gpu.triton_gemm import graph_timed

    turn = iter(range(10**9))
    return 1e3 * graph_timed(lambda: fn(*arg_sets[next(turn) % len(arg_sets)]), None)


@triton.jit
def _quantize_kernel(x_ptr, mul_ptr, out_ptr, n, K, BLOCK: tl.constexpr, GELU: tl.constexpr):
    """``out = E4M3(clamp(f(x) · mul[k], ±448))``, ``f`` = tanh-GELU in its sigmoid form rounded to bf16 (as the
    eager model computes it) or the identity; one flat block of ``BLOCK`` elements per program (run 13 measured an
    earlier form: int64 offsets, ``x/2 · (1 + 2σ(2u) − 1)``)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # int32: the wrapper checks n < 2^31
    inside = offs < n
    x = tl.load(x_ptr + offs, mask=inside).to(tl.float32)
    if GELU:  # x · σ(2u), u = √(2/π) (x + 0.044715 x³)
        x = (x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))).to(tl.bfloat16).to(tl.float32)
    y = tl.clamp(x * tl.load(mul_ptr + offs % K, mask=inside), -448.0, 448.0)
    tl.store(out_ptr + offs, y.to(tl.float8e4nv), mask=inside)


def triton_quantize(h: torch.Tensor, mul: torch.Tensor, apply_gelu: bool, block: int = 4096,
                    warps: int = 8) -> torch.Tensor:
    """Hand-written quantizer: ``h`` ``(..., K)`` bf16 -> E4M3 codes ``(M, K)``, GELU first with ``apply_gelu``."""
    flat = h.reshape(-1)
    if flat.numel() >= 2**31:
        raise ValueError(f"{flat.numel()} elements: the kernel indexes in int32")
    out = torch.empty(flat.shape, device=h.device, dtype=torch.float8_e4m3fn)
    _quantize_kernel[(triton.cdiv(flat.numel(), block),)](flat, mul.reshape(-1), out, flat.numel(), h.shape[-1],
                                                          BLOCK=block, GELU=apply_gelu, num_warps=warps)
    return out.reshape(-1, h.shape[-1])


@triton.jit
def _dynamic_row_kernel(x_ptr, smooth_ptr, out_ptr, scale_ptr, K, BLOCK_K: tl.constexpr, GELU: tl.constexpr):
    """One row per program, held in registers: ``v = f(x) / λ``, ``s = amax|v| / 127`` (1 where 0), codes
    ``round(v / s)`` (half to even) and ``s``; ``f`` as in :func:`_quantize_kernel`. One read of the row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    inside = offs < K
    x = tl.load(x_ptr + row * K + offs, mask=inside, other=0.0).to(tl.float32)
    if GELU:
        x = (x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))).to(tl.bfloat16).to(tl.float32)
    v = tl.math.div_rn(x, tl.load(smooth_ptr + offs, mask=inside, other=1.0))
    amax = tl.max(tl.abs(v), axis=0)
    scale = tl.where(amax > 0, tl.math.div_rn(amax, 127.0), 1.0)
    q = tl.math.div_rn(v, scale)
    q = (q + 12582912.0) - 12582912.0  # round half to even (|q| <= 127: 1.5 · 2^23 leaves no fraction bits)
    tl.store(out_ptr + row * K + offs, tl.clamp(q, -128.0, 127.0).to(tl.int8), mask=inside)
    tl.store(scale_ptr + row, scale)


def triton_dynamic_quantize(h: torch.Tensor, smooth: torch.Tensor, apply_gelu: bool,
                            warps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written one-pass per-token INT8 quantizer: ``h`` ``(..., K)`` bf16, ``smooth`` ``(1, K)`` float32 ->
    codes ``(M, K)`` int8 and scales ``(M, 1)`` float32 (GELU first with ``apply_gelu``)."""
    rows = h.reshape(-1, h.shape[-1])
    out = torch.empty(rows.shape, device=h.device, dtype=torch.int8)
    scales = torch.empty(rows.shape[0], 1, device=h.device, dtype=torch.float32)
    _dynamic_row_kernel[(rows.shape[0],)](rows, smooth.reshape(-1), out, scales, rows.shape[1],
                                          BLOCK_K=triton.next_power_of_2(rows.shape[1]), GELU=apply_gelu,
                                          num_warps=warps)
    return out, scales


def compiled(fn, mode: str):
    """``fn`` compiled under ``MODES[mode]`` (fresh dynamo state, the settings kept for its first calls)."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(MODES[mode]):
        return torch.compile(fn, fullgraph=True, dynamic=False)


def run(model: str, device: str, out: Path | None) -> list[dict]:
    """The one-pass dynamic kernel, every case under every mode, then the hand-written static kernels (the newest
    questions first: a run cut by its time limit keeps them); Inductor's default code saved under ``out``."""
    from torch._inductor.utils import run_and_get_code

    results, tanh_form_codes = one_pass_dynamic(model, device), {}  # mode -> the tanh-form GELU quantizer's codes
    division_codes = {}  # mode -> the compiled dynamic GELU quantizer's codes (the case before the multiplications)
    for name, (fn, arg_sets, nbytes) in cases(SHAPES[model], device).items():
        for mode in MODES:
            compiled_fn = compiled(fn, mode)
            with torch._inductor.config.patch(MODES[mode]):
                _, code = run_and_get_code(compiled_fn, *arg_sets[0])
            if out is not None and mode == "default":
                slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "and")
                (out / f"{model}_{slug}.inductor.txt").write_text("\n\n".join(code))
            us = timed_us(compiled_fn, arg_sets)
            results.append(dict(model=model, case=name, mode=mode, us=round(us, 2), tb_s=round(nbytes / us / 1e6, 2)))
            if fn is gelu_quant:
                tanh_form_codes[mode] = compiled_fn(*arg_sets[0])
            if fn is gelu_sigmoid_quant:
                results[-1]["codes_differing_vs_tanh_form"] = differing_codes(compiled_fn(*arg_sets[0]),
                                                                              tanh_form_codes[mode])
            if fn is gelu_sigmoid_dynamic_quant:
                division_codes[mode] = compiled_fn(*arg_sets[0])[0][0][0]
            if fn is gelu_sigmoid_dynamic_quant_reciprocals:
                results[-1]["codes_differing_vs_division"] = differing_codes(compiled_fn(*arg_sets[0])[0],
                                                                             division_codes[mode])
            print(json.dumps(results[-1]), flush=True)
    return results + hand_written(model, device)


def differing_codes(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many 8-bit codes of ``a`` and ``b`` differ."""
    return int(a.view(torch.uint8).ne(b.view(torch.uint8)).sum())


def ff_inputs(model: str, device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``ROTATE`` bf16 inputs of the FF down-projection's width and a per-channel multiplier ``(1, ff)``."""
    batch, tokens, _, ff = SHAPES[model]
    hidden = [torch.randn(batch, tokens, ff, device=device, dtype=torch.bfloat16) for _ in range(ROTATE)]
    return hidden, torch.rand(1, ff, device=device) + 0.5


def one_pass_dynamic(model: str, device: str) -> list[dict]:
    """The hand-written one-pass per-token quantizer (GELU first) on the FF width, for a few warp counts."""
    hidden, mul = ff_inputs(model, device)
    rows, ff = hidden[0].numel() // hidden[0].shape[-1], hidden[0].shape[-1]
    reference, results = gelu_sigmoid_dynamic_quant(hidden[0], mul)[0][0][0], []
    for warps in (8, 16, 32):
        us = timed_us(lambda h: triton_dynamic_quantize(h, mul, True, warps), [(h,) for h in hidden])
        differing = differing_codes(triton_dynamic_quantize(hidden[0], mul, True, warps)[0], reference)
        results.append(dict(model=model, case="gelu (sigmoid form) + dynamic INT8", mode=f"triton one pass {warps}w",
                            us=round(us, 2), tb_s=round(rows * (ff * 3 + 4) / us / 1e6, 2),
                            codes_differing_vs_eager=differing))
        print(json.dumps(results[-1]), flush=True)
    return results


def hand_written(model: str, device: str) -> list[dict]:
    """The hand-written static quantizer on the FF width, with and without GELU, for a few block sizes."""
    batch, tokens, _, ff = SHAPES[model]
    hidden, mul = ff_inputs(model, device)
    results = []
    for apply_gelu in (False, True):
        for block, warps in ((1024, 4), (4096, 8), (8192, 8)):
            us = timed_us(lambda h: triton_quantize(h, mul, apply_gelu, block, warps), [(h,) for h in hidden])
            reference = (gelu_quant if apply_gelu else quant)(hidden[0], mul)[0]
            differing = differing_codes(triton_quantize(hidden[0], mul, apply_gelu, block, warps), reference)
            results.append(dict(model=model, case=("gelu + quantize" if apply_gelu else "quantize (ff width)"),
                                mode=f"triton {block}/{warps}w", us=round(us, 2),
                                tb_s=round(batch * tokens * ff * 3 / us / 1e6, 2), codes_differing_vs_eager=differing))
            print(json.dumps(results[-1]), flush=True)
    return results


def smoke() -> None:
    """CPU: every case compiles (Inductor's C++ backend) and matches its eager self; the hand-written kernel
    (Triton's interpreter) matches the compiled quantizer's codes."""
    import os

    h = torch.randn(64, 256, dtype=torch.bfloat16) * 4
    print(f"smoke gelu forms: max |tanh form − sigmoid form| in float32 "
          f"{float((gelu(h.float()) - gelu_tanh_sigmoid_form(h.float())).abs().max()):.3g}")
    for name, (fn, arg_sets, _) in cases((1, 8, 64, 256), "cpu").items():
        eager, fast = fn(*arg_sets[0]), compiled(fn, "default")(*arg_sets[0])
        pairs = zip(tree_leaves(eager), tree_leaves(fast))
        worst = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
        print(f"smoke {name}: compiled vs eager max diff {worst:.3g}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        h, mul = torch.randn(8, 256, dtype=torch.bfloat16), torch.rand(1, 256) + 0.5
        for apply_gelu, ref in ((False, quant(h, mul)[0]), (True, gelu_quant(h, mul)[0])):
            diff = (triton_quantize(h, mul, apply_gelu, block=512, warps=4).float() - ref.float()).abs()
            print(f"smoke triton gelu={apply_gelu}: codes differing {int((diff > 0).sum())} of {diff.numel()}, "
                  f"max diff {float(diff.max()):.3g}")
        h = h * 3  # some rows past the INT8 range of a unit scale
        for apply_gelu in (False, True):
            codes, scales = triton_dynamic_quantize(h, mul, apply_gelu, warps=4)
            (ref_codes, ref_scales), = (gelu_sigmoid_dynamic_quant if apply_gelu else dynamic_quant)(
                *((h, mul) if apply_gelu else (h.reshape(-1, 256), mul)))
            print(f"smoke triton one-pass dynamic gelu={apply_gelu}: codes differing "
                  f"{differing_codes(codes, ref_codes[0])} of {codes.numel()}, scales max rel diff "
                  f"{float(((scales - ref_scales[0]) / ref_scales[0]).abs().max()):.3g}")


def table(results: list[dict]) -> str:
    lines = ["| model | case | mode | µs | TB/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['case']} | {r['mode']} | {r['us']} | {r['tb_s']} |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd35,flux")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json, table.md, Inductor code")
    parser.add_argument("--smoke", action="store_true", help="CPU check (no timing)")
    opts = parser.parse_args()
    if opts.smoke:
        return smoke()
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
    results = [r for model in opts.models.split(",") for r in run(model, "cuda", opts.out)]
    print(table(results))
    if opts.out is not None:
        (opts.out / "results.json").write_text(json.dumps(results, indent=1))
        (opts.out / "table.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
