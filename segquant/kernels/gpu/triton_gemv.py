"""The weight-bound case of the scaled GEMM: ``M`` a few rows (batch-1 AdaLN and time-embedding linears),
8-bit or packed INT4 weights, on the CUDA cores (``ops`` sends it one row of 8-bit weights, up to four of
packed INT4: each row reads the weight again).

A tensor-core tile wastes most of its rows there and the tiled kernel (:mod:`.triton_gemm`) streams the
weight at a fraction of the memory bandwidth, so each program reduces ``BN`` output channels of one input
row: ``BK`` weight bytes per row and step (``BN x BK`` bytes in flight), the input scale, DualScale's
negative side, the weight's row scale, bias and the low-rank branch in the epilogue. Same arguments and
math as the op (:mod:`segquant.kernels.gemm_reference`), restricted to inputs whose scale is constant along
K and, for 8-bit weights, one weight scale per output row (``scale_mode`` 0):

- 8-bit weights (``W4`` off): INT8 x INT8 products summed in int32 (exact, as on the tensor cores), FP8
  E4M3 x E4M3 products in float32 (exact products; only the summation order differs; with DualScale the two
  sides and their scales are folded into one float32 input ``s⁺ q⁺ + s⁻ q⁻`` first, one product per weight
  byte instead of two, each term then rounded in float32, ≈ 1e-7 relative). On a GPU with
  ``K % 4 == 0`` the INT8 operands are read as int32 words and multiplied four lanes at a time by PTX
  ``dp4a`` (``DP4A``): one instruction per four weight bytes instead of four unpacks and four multiply-adds,
  which keeps DualScale's second sum off the critical path (the interpreter, which has no inline assembly,
  runs the per-byte loop);
- packed INT4 (``W4``): byte ``i`` of a weight row holds codes ``2i`` (low nibble) and ``2i + 1``, the input
  is read as pairs and split by shifts (:func:`.triton_gemm._split_pairs`), each code is dequantized with
  its group's scale and rounded to the compute dtype as on the tensor-core paths, products and sums in
  float32.

``SEGQUANT_TRITON_AUTOTUNE=0`` in the environment skips autotuning (first config; for tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from segquant.kernels.gpu.bound_launch import launch
from segquant.kernels.gpu.triton_gemm import (_A_KINDS, _NO_SEGMENT, _PAIR_DTYPES, _split_pairs, exact_integer,
                                              lowrank_args, scale_strides, tuned_or_first)

#: Triton's CPU interpreter (set before Triton is imported) has no inline assembly: no ``dp4a`` there.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# (BN, BK bytes per weight row and step, warps, stages)
_CONFIGS = [triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=st)
            for bn, bk, w, st in [(16, 256, 4, 3), (32, 128, 4, 4), (8, 256, 4, 4), (16, 128, 4, 4),
                                  (32, 256, 8, 3), (64, 64, 4, 4), (16, 512, 4, 2), (32, 512, 8, 2),
                                  (8, 512, 4, 3), (64, 128, 8, 3)]]


def _legal(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    legal = [c for c in configs if args["OUT_SEG"] % c.kwargs["BN"] == 0] or configs[-1:]
    return tuned_or_first(legal)


@triton.jit
def _dp4a(w, a, acc):
    """``acc + Σ_j w_j · a_j`` over the four int8 lanes of the int32 words ``w`` and ``a`` (PTX ``dp4a``)."""
    return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [w, a, acc], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit
def _int8_row_dp4a(a_row, b_rows, K, DUAL: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """INT8 weights and inputs as int32 words (``K / 4`` per row): ``(Σ_k a[k] · b[n, k], the same with the
    negative codes at word K / 4)`` ``(BN,)`` int32, kept per lane over K and reduced once at the end."""
    BW: tl.constexpr = BK // 4
    offs = tl.arange(0, BW)
    words = K // 4
    lanes = tl.zeros((BN, BW), tl.int32)
    lanes_neg = tl.zeros((BN, BW), tl.int32)
    for k0 in range(0, words, BW):
        ok = k0 + offs < words
        w = tl.load(b_rows + k0 + offs[None, :], mask=ok[None, :], other=0)
        a = tl.load(a_row + k0 + offs, mask=ok, other=0)
        lanes = _dp4a(w, tl.broadcast_to(a[None, :], (BN, BW)), lanes)
        if DUAL:
            a_neg = tl.load(a_row + words + k0 + offs, mask=ok, other=0)
            lanes_neg = _dp4a(w, tl.broadcast_to(a_neg[None, :], (BN, BW)), lanes_neg)
    return tl.sum(lanes, axis=1), tl.sum(lanes_neg, axis=1)


@triton.jit
def _w8_row(a_row, b_rows, K, acc, acc_neg, s_pos, s_neg, IS_INT: tl.constexpr, DUAL: tl.constexpr,
            BK: tl.constexpr):
    """8-bit weights: ``acc[n] += Σ_k a[k] · b[n, k]`` over the whole K (DualScale: INT8 sums the negative codes
    at ``a_row + K`` into ``acc_neg``; FP8 folds both sides and their scales into one float32 input,
    ``acc[n] += Σ_k (s⁺ a⁺[k] + s⁻ a⁻[k]) · b[n, k]``, already scaled)."""
    offs = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        ok = k0 + offs < K
        w = tl.load(b_rows + k0 + offs[None, :], mask=ok[None, :], other=0.0)
        a = tl.load(a_row + k0 + offs, mask=ok, other=0.0)
        a_neg = tl.load(a_row + K + k0 + offs, mask=ok, other=0.0) if DUAL else a
        if IS_INT:
            w = w.to(tl.int32)
            acc += tl.sum(w * a.to(tl.int32)[None, :], axis=1)
            if DUAL:
                acc_neg += tl.sum(w * a_neg.to(tl.int32)[None, :], axis=1)
        else:
            a = a.to(tl.float32)
            if DUAL:  # one product per weight byte instead of two
                a = a * s_pos + a_neg.to(tl.float32) * s_neg
            acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    return acc, acc_neg


@triton.jit
def _rounded(w, dtype: tl.constexpr):
    """The dequantized weight as the tensor-core paths see it: rounded once to the 16-bit compute dtype
    (float32 inputs: unchanged), returned in float32."""
    if dtype == tl.float32:
        out = w
    else:
        out = w.to(dtype).to(tl.float32)
    return out


@triton.jit
def _w4_row(a_row, b_rows, w_rows, wcol_ptr, K, acc, acc_neg, A_KIND: tl.constexpr, DUAL: tl.constexpr,
            BN: tl.constexpr, BK: tl.constexpr, CHUNK: tl.constexpr):
    """Packed INT4 weights (``BK`` bytes = ``2·BK`` codes per step; the input in pairs): ``acc[n] +=
    Σ_k a[k] · round(code[n, k] · w_scale[n, group(k)])``. A step holds ``BK / CHUNK`` chunks, each inside
    one weight-scale group."""
    pairs = tl.arange(0, BK)
    NC: tl.constexpr = BK // CHUNK
    chunk_k = tl.arange(0, NC) * (2 * CHUNK)
    half_k = K // 2
    for p0 in range(0, half_k, BK):
        ok = p0 + pairs < half_k
        a_even, a_odd = _split_pairs(tl.load(a_row + p0 + pairs, mask=ok, other=0), A_KIND)
        codes = tl.load(b_rows + p0 + pairs[None, :], mask=ok[None, :], other=0).to(tl.int8, bitcast=True)
        col = tl.load(wcol_ptr + tl.minimum(2 * p0 + chunk_k, K - 1))  # (NC,) scale column of each chunk
        scale = tl.reshape(tl.broadcast_to(tl.load(w_rows + col[None, :])[:, :, None], (BN, NC, CHUNK)),
                           (BN, BK))  # (BN, BK): the scale of every byte's two codes
        w_even = _rounded(((codes << 4) >> 4).to(tl.float32) * scale, a_even.dtype)
        w_odd = _rounded((codes >> 4).to(tl.float32) * scale, a_even.dtype)
        acc += tl.sum(w_even * a_even.to(tl.float32)[None, :] + w_odd * a_odd.to(tl.float32)[None, :], axis=1)
        if DUAL:
            n_even, n_odd = _split_pairs(tl.load(a_row + half_k + p0 + pairs, mask=ok, other=0), A_KIND)
            acc_neg += tl.sum(w_even * n_even.to(tl.float32)[None, :] + w_odd * n_odd.to(tl.float32)[None, :],
                              axis=1)
    return acc, acc_neg


@triton.autotune(configs=_CONFIGS, key=["N", "K", "OUT_SEG", "CHUNK_ALIGN", "W4", "DUAL", "A_KIND", "DP4A"],
                 prune_configs_by={"early_config_prune": _legal})
@triton.heuristics({"CHUNK": lambda args: min(args["BK"], args["CHUNK_ALIGN"])})
@triton.jit
def _gemv_kernel(a_ptr, b_ptr, c_ptr, as_ptr, asn_ptr, ws_ptr, wcol_ptr, bias_ptr, t_ptr, u_ptr,
                 N, K, OUT_SEG, RANK, CHUNK_ALIGN,
                 stride_as, stride_am, stride_bn, stride_cm, stride_ss, stride_sm, stride_wn, stride_tm, stride_un,
                 W4: tl.constexpr, DUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr,
                 A_KIND: tl.constexpr, DP4A: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, CHUNK: tl.constexpr):
    pid_n, m = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BN + tl.arange(0, BN)
    rn = tl.where(offs_n < N, offs_n, 0)
    seg = (pid_n * BN) // OUT_SEG
    a_row = a_ptr + seg * stride_as + m * stride_am
    b_rows = b_ptr + rn[:, None] * stride_bn
    scale_at = seg * stride_ss + m * stride_sm
    s_pos, s_neg = tl.load(as_ptr + scale_at), tl.load(asn_ptr + scale_at)
    if W4:
        zero = tl.zeros((BN,), tl.float32)
        acc, acc_neg = _w4_row(a_row, b_rows, ws_ptr + rn[:, None] * stride_wn, wcol_ptr, K, zero, zero, A_KIND,
                               DUAL, BN, BK, CHUNK)
    elif DP4A:
        acc, acc_neg = _int8_row_dp4a(a_row, b_rows, K, DUAL, BN, BK)
    else:
        zero = tl.zeros((BN,), tl.int32 if A_KIND == 0 else tl.float32)
        acc, acc_neg = _w8_row(a_row, b_rows, K, zero, zero, s_pos, s_neg, A_KIND == 0, DUAL, BK)
    FOLDED: tl.constexpr = DUAL and A_KIND == -1 and not W4  # FP8 DualScale: the scales are in the sum
    if FOLDED:
        out = acc
    else:
        out = acc.to(tl.float32) * s_pos
        if DUAL:
            out += acc_neg.to(tl.float32) * s_neg
    if not W4:  # one weight scale per output row
        out = out * tl.load(ws_ptr + rn * stride_wn + tl.load(wcol_ptr))
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn).to(tl.float32)
    if HAS_LR:
        offs_r = tl.arange(0, R)
        t = tl.load(t_ptr + m * stride_tm + offs_r, mask=offs_r < RANK, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + rn[:, None] * stride_un + offs_r[None, :], mask=(offs_r < RANK)[None, :], other=0.0)
        out += tl.sum(u.to(tl.float32) * t[None, :], axis=1)
    tl.store(c_ptr + m * stride_cm + offs_n, out.to(c_ptr.dtype.element_ty), mask=offs_n < N)


def _pow2_part(value: int) -> int:
    return value & -value if value else 1 << 30


def gemv_triton(a, b, a_scale, a_scale_neg, w_scale, w_col, bias, lowrank_t, lowrank_up, out_segment: int,
                k_align: int, out_dtype: torch.dtype) -> torch.Tensor:
    """``(Sa, M, K·(1+dual))`` codes (or W4A16's 16-bit input) x weights ``(N, K)`` 8-bit or packed ``(N, K/2)``
    -> ``(M, N)``; the op's arguments, with the input scales ``(Sa, M|1, 1)`` constant along K and, for 8-bit
    weights, one weight-scale column (``w_col`` constant)."""
    sa, m, _ = a.shape
    n, k = b.shape[0], w_col.shape[0]
    w4, fp_fusion = b.dtype == torch.uint8, not exact_integer(a, b)
    inputs, weights = a.contiguous(), b.contiguous()
    dp4a = _dp4a_fits(inputs, weights, k)
    if w4:
        inputs = inputs.view(_PAIR_DTYPES[a.dtype])
    elif dp4a:
        inputs, weights = inputs.view(torch.int32), weights.view(torch.int32)
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    neg = a_scale_neg.contiguous() if a_scale_neg is not None else a_scale
    t, u, rank = lowrank_args(lowrank_t, lowrank_up, ws)
    grid = lambda meta: (triton.cdiv(n, meta["BN"]), m)  # noqa: E731
    launch(
        _gemv_kernel, grid, inputs, weights, out, a_scale, neg, ws, w_col, bias if bias is not None else ws, t, u,
        n, k, out_segment if sa > 1 else _NO_SEGMENT, rank, _pow2_part(k_align // 2) if w4 else 1 << 30,
        inputs.stride(0) if sa > 1 else 0, inputs.stride(1), weights.stride(0), out.stride(0), *scale_strides(a_scale),
        ws.stride(0), t.stride(0), u.stride(0),
        W4=w4, DUAL=a_scale_neg is not None, HAS_BIAS=bias is not None, HAS_LR=lowrank_t is not None,
        R=max(16, triton.next_power_of_2(rank)), A_KIND=_A_KINDS[a.dtype], DP4A=dp4a, enable_fp_fusion=fp_fusion)
    return out


def _dp4a_fits(inputs: torch.Tensor, weights: torch.Tensor, k: int) -> bool:
    """INT8 x INT8 on a GPU (not the interpreter) with ``K % 4 == 0`` and both operands 4-byte aligned: read as
    int32 words for ``dp4a``."""
    return (inputs.dtype == weights.dtype == torch.int8 and k % 4 == 0 and inputs.is_cuda and not _INTERPRETED
            and inputs.storage_offset() % 4 == 0 and weights.storage_offset() % 4 == 0)
