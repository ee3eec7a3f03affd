"""Two Triton kernels for packed INT4 weights beside the tiled scaled GEMM (:mod:`.triton_gemm`):

- :func:`gemv_w4_triton`, the weight-bound case (``M`` a few rows: batch-1 AdaLN / time-embedding linears).
  A tensor-core tile wastes most of its rows there and the tiled kernel streams the weight at a fraction
  of the memory bandwidth, so each program reduces ``BN`` output channels of one row on the CUDA cores:
  ``BKP`` byte pairs per step (``BN x BKP`` bytes in flight), each weight dequantized and rounded to the
  compute dtype as on the tensor-core paths, products and sums in float32, input scale, bias and the
  low-rank branch in the epilogue. Same arguments and math as the op (:mod:`segquant.kernels.gemm_reference`),
  restricted to inputs whose scale is constant along K and no DualScale.
- :func:`dequantize_w4_triton`: packed codes ``(N, K/2)`` -> ``code · w_scale[n, w_col[k]]`` ``(N, K)`` in
  a 16-bit dtype, one pass; the compute-bound case multiplies that with cuBLAS (see ``ops.gemm``), since
  dequantizing in the tiled kernel's registers keeps it at a fraction of the 16-bit tensor-core rate.
  With two-level scales (uint8 steps 1..16 per group) it writes the exact INT8 weight ``code · step``
  instead, for the 8-bit tensor-core GEMM (``plan.seglinear_forward``).

``SEGQUANT_TRITON_AUTOTUNE=0`` in the environment skips autotuning (first config; for tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from segquant.kernels.gpu.triton_gemm import (_A_KINDS, _NO_SEGMENT, _PAIR_DTYPES, _split_pairs, lowrank_args,
                                              scale_strides)

GEMV_MAX_M = 4  # rows up to which the GEMV beats a tensor-core tile
_GEMV_CONFIGS = [triton.Config({"BN": bn, "BKP": bkp}, num_warps=w, num_stages=st)
                 for bn, bkp, w, st in [(16, 256, 4, 3), (32, 128, 4, 4), (8, 256, 4, 4), (16, 128, 4, 4),
                                        (32, 256, 8, 3), (64, 64, 4, 4)]]


def _legal_gemv(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    legal = [c for c in configs if args["OUT_SEG"] % c.kwargs["BN"] == 0] or configs[-1:]
    return legal[:1] if os.environ.get("SEGQUANT_TRITON_AUTOTUNE") == "0" else legal


@triton.autotune(configs=_GEMV_CONFIGS, key=["N", "K", "OUT_SEG", "CHUNK_ALIGN"],
                 prune_configs_by={"early_config_prune": _legal_gemv})
@triton.heuristics({"CHUNK": lambda args: min(args["BKP"], args["CHUNK_ALIGN"])})
@triton.jit
def _gemv_w4_kernel(a_ptr, b_ptr, c_ptr, as_ptr, ws_ptr, wcol_ptr, bias_ptr, t_ptr, u_ptr,
                    N, K, OUT_SEG, RANK, CHUNK_ALIGN,
                    stride_as, stride_am, stride_bn, stride_cm, stride_ss, stride_sm, stride_wn, stride_tm, stride_un,
                    HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, A_KIND: tl.constexpr,
                    BN: tl.constexpr, BKP: tl.constexpr, CHUNK: tl.constexpr):
    pid_n, m = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    rn = tl.where(offs_n < N, offs_n, 0)
    seg = (pid_n * BN) // OUT_SEG
    pairs = tl.arange(0, BKP)
    a_row = a_ptr + seg * stride_as + m * stride_am
    b_rows = b_ptr + rn[:, None] * stride_bn
    w_rows = ws_ptr + rn[:, None] * stride_wn
    NC: tl.constexpr = BKP // CHUNK  # scale chunks per step: each lies in one weight-scale group
    chunk_k = tl.arange(0, NC) * (2 * CHUNK)
    half_k = K // 2
    acc = tl.zeros((BN,), tl.float32)
    for p0 in range(0, half_k, BKP):
        ok = p0 + pairs < half_k
        a_even, a_odd = _split_pairs(tl.load(a_row + p0 + pairs, mask=ok, other=0), A_KIND)
        codes = tl.load(b_rows + p0 + pairs[None, :], mask=ok[None, :], other=0).to(tl.int8, bitcast=True)
        col = tl.load(wcol_ptr + tl.minimum(2 * p0 + chunk_k, K - 1))  # (NC,) scale column of each chunk
        scale = tl.reshape(tl.broadcast_to(tl.load(w_rows + col[None, :])[:, :, None], (BN, NC, CHUNK)),
                           (BN, BKP))  # (BN, BKP): the scale of every byte's two codes
        w_even = _rounded(((codes << 4) >> 4).to(tl.float32) * scale, a_even.dtype)
        w_odd = _rounded((codes >> 4).to(tl.float32) * scale, a_even.dtype)
        prod = w_even * a_even.to(tl.float32)[None, :] + w_odd * a_odd.to(tl.float32)[None, :]  # (BN, BKP)
        acc += tl.sum(prod, axis=1)
    out = acc * tl.load(as_ptr + seg * stride_ss + m * stride_sm)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn).to(tl.float32)
    if HAS_LR:
        offs_r = tl.arange(0, R)
        t = tl.load(t_ptr + m * stride_tm + offs_r, mask=offs_r < RANK, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + rn[:, None] * stride_un + offs_r[None, :], mask=(offs_r < RANK)[None, :], other=0.0)
        out += tl.sum(u.to(tl.float32) * t[None, :], axis=1)
    tl.store(c_ptr + m * stride_cm + offs_n, out.to(c_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _rounded(w, dtype: tl.constexpr):
    """The dequantized weight as the tensor-core paths see it: rounded once to the 16-bit compute dtype
    (float32 inputs: unchanged), returned in float32."""
    if dtype == tl.float32:
        out = w
    else:
        out = w.to(dtype).to(tl.float32)
    return out


def _pow2_part(value: int) -> int:
    return value & -value if value else 1 << 30


def gemv_w4_triton(a, b, a_scale, w_scale, w_col, bias, lowrank_t, lowrank_up, out_segment: int, k_align: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """``(Sa, M, K) x`` packed ``(N, K/2)`` -> ``(M, N)``; the op's arguments (no DualScale, the input scale
    constant along K: ``a_scale`` ``(Sa, M|1, 1)``)."""
    sa, m, k = a.shape
    n = b.shape[0]
    pairs = a.contiguous().view(_PAIR_DTYPES[a.dtype])
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    t, u, rank = lowrank_args(lowrank_t, lowrank_up, ws)
    grid = lambda meta: (triton.cdiv(n, meta["BN"]), m)  # noqa: E731
    _gemv_w4_kernel[grid](
        pairs, b.contiguous(), out, a_scale, ws, w_col, bias if bias is not None else ws, t, u,
        n, k, out_segment if sa > 1 else _NO_SEGMENT, rank, _pow2_part(k_align // 2),
        pairs.stride(0) if sa > 1 else 0, pairs.stride(1), b.stride(0), out.stride(0), *scale_strides(a_scale),
        ws.stride(0), t.stride(0), u.stride(0),
        HAS_BIAS=bias is not None, HAS_LR=lowrank_t is not None, R=max(16, triton.next_power_of_2(rank)),
        A_KIND=_A_KINDS[a.dtype])
    return out


@triton.jit
def _dequantize_w4_kernel(b_ptr, ws_ptr, wcol_ptr, out_ptr, N, K, stride_bn, stride_wn, stride_on,
                          BN: tl.constexpr, BKP: tl.constexpr, INTEGER: tl.constexpr):
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_p = tl.program_id(1) * BKP + tl.arange(0, BKP)
    ok = (offs_n < N)[:, None] & (offs_p < K // 2)[None, :]
    codes = tl.load(b_ptr + offs_n[:, None] * stride_bn + offs_p[None, :], mask=ok, other=0).to(tl.int8, bitcast=True)
    col = tl.load(wcol_ptr + tl.minimum(2 * offs_p, K - 1))  # a pair never straddles a group
    scale = tl.load(ws_ptr + offs_n[:, None] * stride_wn + col[None, :], mask=ok, other=0)
    if INTEGER:  # two-level steps (uint8 1..16): exact in int32, |code · step| <= 128
        scale = scale.to(tl.int32)
        even = ((codes << 4) >> 4).to(tl.int32) * scale
        odd = (codes >> 4).to(tl.int32) * scale
    else:
        even = ((codes << 4) >> 4).to(tl.float32) * scale
        odd = (codes >> 4).to(tl.float32) * scale
    both = tl.reshape(tl.join(even, odd), (BN, 2 * BKP))  # k = 2p, 2p + 1 side by side
    offs_k = tl.program_id(1) * 2 * BKP + tl.arange(0, 2 * BKP)
    mask = (offs_n < N)[:, None] & (offs_k < K)[None, :]
    tl.store(out_ptr + offs_n[:, None] * stride_on + offs_k[None, :], both.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_w4_triton(b: torch.Tensor, w_scale: torch.Tensor, w_col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed INT4 ``(N, K/2)`` -> ``(N, K)`` ``dtype``: ``code · w_scale[n, w_col[k]]`` rounded once; with
    uint8 ``w_scale`` (two-level steps) and ``dtype`` int8 the exact integer product."""
    n, k = b.shape[0], w_col.shape[0]
    out = torch.empty(n, k, device=b.device, dtype=dtype)
    ws = w_scale.contiguous()
    bn, bkp = 32, 64
    _dequantize_w4_kernel[(triton.cdiv(n, bn), triton.cdiv(k // 2, bkp))](
        b.contiguous(), ws, w_col, out, n, k, b.stride(0), ws.stride(0), out.stride(0), BN=bn, BKP=bkp,
        INTEGER=ws.dtype == torch.uint8)
    return out
