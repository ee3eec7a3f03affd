"""GEMM-level benchmark of 4-bit weights at FLUX.1-dev shapes: segquant W4A8 / W4A16 against bf16 and torchao.

Per shape (``M`` tokens x ``K`` -> ``N``) and ``M`` in {1 (batch-1 weight-bound), 64, 4608 (1024², compute-bound)},
on random data, in one process, each timed as a CUDA-graph replay (``triton.testing.do_bench_cudagraph``:
GPU time, no launch overhead):

- ``bf16``: ``torch.mm`` with bf16 weights;
- ``w4a8_g64``: INT8 static per-tensor input quantization + the packed-INT4 GEMM, group-64 weight scales;
- ``w4a8_g64_r32``: the same with SVDQuant's rank-32 branch (down-projection ``x D'ᵀ`` as one bf16 matmul,
  up-projection in the GEMM's epilogue);
- ``w4a16_g64``: bf16 inputs x packed INT4 weights, group-64 scales;
- ``torchao_int4``: torchao ``Int4WeightOnlyConfig(group_size=64)`` (tinygemm packing) on an ``nn.Linear``.

The segquant rows go through ``ops.gemm``, which picks the GEMV at ``M <= 4``, the tiled kernel (INT4 dequantized
in registers) up to ``M < 128`` and the one-pass weight dequantization + cuBLAS from ``M >= 128``.

Reports ms, TFLOP/s (``2·M·N·K``), the fraction of 1979 8-bit TFLOP/s, achieved bandwidth (weight bytes + input
+ output bytes over the time) and its fraction of 4.8 TB/s, and the relative error against the pure-torch
twin. ``SEGQUANT_TRITON_AUTOTUNE=0`` skips autotuning.

    python benchmarks/gemm_w4.py --json out.json
"""

from __future__ import annotations

import argparse
import json

import torch
import triton

from segquant.kernels.gemm_reference import scaled_gemm_reference
from segquant.kernels.gpu import ops
from segquant.numerics import quantize_static
from segquant.enums import DType
from segquant.numerics import pack_int4

PEAK_8BIT_TFLOPS, PEAK_TBPS = 1979.0, 4.8
SHAPES = {"attn_out": (3072, 3072), "ff_up": (3072, 12288), "ff_down": (12288, 3072)}  # (K, N)
GROUP, RANK = 64, 32


def operands(m: int, k: int, n: int) -> dict:
    """Random weights (bf16 and their INT4 g64 codes), input, static input multiplier, low-rank factors."""
    w = torch.randn(n, k, device="cuda") * 0.02
    scale = w.view(n, k // GROUP, GROUP).abs().amax(-1) / 7
    codes = (w.view(n, k // GROUP, GROUP) / scale[..., None]).round().clamp(-8, 7).to(torch.int8).view(n, k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    in_scale = x.float().abs().amax() / 127
    return dict(x=x, w_bf16=w.to(torch.bfloat16), packed=pack_int4(codes), w_scale=scale.float().contiguous(),
                w_col=(torch.arange(k, device="cuda") // GROUP).int(), a_col=torch.zeros(k, device="cuda").int(),
                in_mul=(1 / in_scale).reshape(1, 1).expand(1, k).contiguous(), in_scale=in_scale.reshape(1, 1, 1),
                down=(torch.randn(RANK, k, device="cuda") * 0.02).to(torch.bfloat16),
                up=(torch.randn(n, RANK, device="cuda") * 0.02).to(torch.bfloat16))


def variants(o: dict) -> dict:
    """name -> (callable, twin callable or None)."""
    k = o["x"].shape[1]

    def w4a8(lowrank: bool, fn=ops.gemm):
        def run():
            codes = quantize_static(o["x"], o["in_mul"], DType.INT8)
            t = o["x"] @ o["down"].T if lowrank else None
            return fn(codes, o["packed"], o["in_scale"], None, o["w_scale"], o["a_col"], o["w_col"], None, t,
                      o["up"] if lowrank else None, o["packed"].shape[0], 2, GROUP, torch.bfloat16)
        return run

    def w4a16(fn=ops.gemm):
        ones = torch.ones(1, 1, 1, device="cuda")
        return lambda: fn(o["x"].unsqueeze(0), o["packed"], ones, None, o["w_scale"], o["a_col"], o["w_col"], None,
                          None, None, o["packed"].shape[0], 2, GROUP, torch.bfloat16)

    assert k % GROUP == 0
    return {"bf16": (lambda: o["x"] @ o["w_bf16"].T, None),
            "w4a8_g64": (w4a8(False), w4a8(False, scaled_gemm_reference)),
            "w4a8_g64_r32": (w4a8(True), w4a8(True, scaled_gemm_reference)),
            "w4a16_g64": (w4a16(), w4a16(scaled_gemm_reference))}


def torchao_int4(o: dict):
    """torchao int4 weight-only (group 64) on an ``nn.Linear`` holding the same bf16 weights, or the error."""
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    n, k = o["w_bf16"].shape
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    linear.weight.data.copy_(o["w_bf16"])
    quantize_(linear, Int4WeightOnlyConfig(group_size=GROUP, int4_packing_format="tile_packed_to_4d"))
    return lambda: linear(o["x"])


def measure(name: str, m: int, k: int, n: int) -> list[dict]:
    o = operands(m, k, n)
    found = variants(o)
    try:
        found["torchao_int4"] = (torchao_int4(o), None)
    except Exception as error:  # not installed / no kernel for this GPU: the row says why
        found["torchao_int4"] = (None, f"{type(error).__name__}: {error}"[:200])
    rows = []
    for variant, (fn, twin) in found.items():
        row = dict(shape=name, m=m, k=k, n=n, variant=variant)
        if fn is None:
            rows.append(dict(row, error=twin))
            continue
        try:
            y = fn()
            if callable(twin):
                ref = twin().float()
                row["rel_err_vs_twin"] = float((y.float() - ref).norm() / ref.norm())
            ms = triton.testing.do_bench_cudagraph(fn, rep=100)
        except Exception as error:
            rows.append(dict(row, error=f"{type(error).__name__}: {error}"[:200]))
            continue
        weight_bytes = n * k * (2 if variant == "bf16" else 0.5) + (0 if variant == "bf16" else n * k // GROUP * 4)
        moved = weight_bytes + m * k * 2 + m * n * 2
        row.update(ms=round(ms, 4), tflops=round(2 * m * n * k / ms / 1e9, 1),
                   tbps=round(moved / ms / 1e9, 3))
        row.update(peak_8bit_frac=round(row["tflops"] / PEAK_8BIT_TFLOPS, 3), bw_frac=round(row["tbps"] / PEAK_TBPS, 3))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--m", default="1,64,4608")
    opts = parser.parse_args()
    rows = []
    for m in [int(v) for v in opts.m.split(",")]:
        for name, (k, n) in SHAPES.items():
            rows += measure(name, m, k, n)
            if opts.json:
                with open(opts.json, "w") as f:
                    json.dump(rows, f, indent=1)
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'shape':<9} {'M':>5} {'variant':<14} {'ms':>8} {'vs bf16':>8} {'TFLOP/s':>8} {'8bit pk':>7} "
          f"{'TB/s':>6} {'bw pk':>6} {'rel.err':>9}")
    for r in rows:
        if "ms" not in r:
            print(f"{r['shape']:<9} {r['m']:>5} {r['variant']:<14} FAILED {r['error'][:80]}")
            continue
        ref = next(x["ms"] for x in rows if x["shape"] == r["shape"] and x["m"] == r["m"] and x["variant"] == "bf16")
        print(f"{r['shape']:<9} {r['m']:>5} {r['variant']:<14} {r['ms']:>8.4f} {ref / r['ms']:>7.2f}x "
              f"{r['tflops']:>8} {r['peak_8bit_frac']:>7} {r['tbps']:>6} {r['bw_frac']:>6} "
              f"{r.get('rel_err_vs_twin', float('nan')):>9.2e}")


if __name__ == "__main__":
    main()
