"""Triton scaled GEMM: INT8 x INT8 (int32 accumulate), FP8 E4M3 x FP8 E4M3 (float32), INT8 x packed INT4
(W4A8, int32) and 16-bit x packed INT4 (W4A16, float32), with scales.

One kernel, constexpr switches (see :mod:`segquant.kernels.gemm_reference` for the math):

- ``MODE`` (the op's ``scale_mode``): 0 = the scales are constant along K (fast path: the whole K
  accumulates in int32 / float32, scales once in the epilogue); 1 = the input scale varies along K
  (input segments / groups), 2 = the weight scale too. With 1 / 2, each K tile (BK divides ``k_align``, so
  a tile never straddles a scale boundary) is accumulated exactly and added as
  ``tile · a_scale[:, j] (· w_scale[:, g])`` into a float32 accumulator. (A nested loop that accumulates
  each long group in int32 and scales once per group measured 3.5-6x slower on an H200: Triton does not
  pipeline the inner loop there; see benchmarks/NOTES_w8a8.md.)
- ``DUAL``: DualScale; ``a`` holds ``[q⁺ | q⁻]`` along K. Each B tile is loaded once and feeds two
  products (two accumulators on the fast path).
- Output segments with their own input: ``a`` is ``(Sa, M, KA)`` and each N tile reads the A of its
  segment (``seg = n0 // OUT_SEG``; BN divides ``OUT_SEG``), so S segments are one launch.
- ``W4``: ``b`` is packed INT4, uint8 ``(N, K/2)`` (the saved format: code ``2i`` in the low nibble of
  byte ``i``, ``K`` even); each B tile is read as ``BK/2`` bytes and split by shifts into the codes of
  the even and of the odd k, and A is read as pairs (int8 codes as int16, bf16/fp16 as int32, float32 as
  int64) split the same way, so a K tile is two products of depth ``BK/2`` with no register shuffle.
  The codes are dequantized in registers to the compute dtype (Hopper has no INT4 tensor cores):
  ``code · w_scale[n, column]`` is formed in float32 and rounded once to it, so the whole K accumulates in
  one float32 accumulator with no per-tile rescaling (the weight scale is in B; a tile may span several
  groups). W4A8: INT8 input codes compute in fp16 (exact; the dequantized weight rounds to fp16, ~2^-12
  relative); W4A16: ``a`` holds the bf16/fp16/float32 input itself, which sets the compute dtype, and
  ``a_scale`` is 1. The twin and the emulated SegLinear round the same way.
- ``HAS_BIAS``; ``HAS_LR``: the low-rank branch in the epilogue, one more product per output tile:
  ``t (BM, R) @ Uᵀ (R, BN)`` in float32 (``t = x D'ᵀ`` is the down-projected input, ``R`` the rank
  padded to a power of 2 >= 16), so the output is written once, in its final dtype (SVDQuant's fusion).
- ``TILE_SCALE``: each K tile is accumulated on its own and rescaled: where the input scale changes along K
  (input segments / groups), or an 8-bit weight's scale does (``MODE`` 2; INT4 takes its scale in B).

Weights ``b`` ``(N, K)`` are K-major, as Hopper's wgmma wants for 8-bit operands.
``SEGQUANT_TRITON_AUTOTUNE=0`` in the environment skips autotuning (first legal config; for tests).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from segquant.kernels.fp8_accumulation import KERNEL_PROMOTE_EVERY
from segquant.kernels.gpu.bound_launch import launch
from segquant.kernels.gemm_reference import input_scale_varies, rescaled_per_tile, scale_tile_k

# (BM, BN, BK, num_warps, num_stages); for each launch only the configs with the largest legal BK compete
_BIG = [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4), (128, 256, 64, 8, 4),
        (256, 128, 64, 8, 4), (128, 128, 64, 4, 5), (128, 128, 32, 4, 6)]
_SMALL = [(16, 64, 128, 4, 4), (16, 32, 128, 4, 4), (16, 32, 256, 4, 3), (16, 16, 256, 4, 4), (64, 128, 128, 4, 4),
          (64, 256, 128, 8, 3), (64, 64, 128, 4, 4), (64, 64, 256, 4, 3), (64, 128, 256, 4, 3), (16, 64, 64, 4, 5),
          (16, 32, 32, 4, 6)]
#: Up to this many rows the 64-row tiles compete with the 128/256-row ones: the text stream of joint blocks (512 rows
#: in FLUX, 666 in SD3.5 at batch 2) fills only 48-96 of the H200's 132 SMs with 128-row tiles (64 x 64 tiles: 384
#: programs for a 512 x 3072 output, several resident per SM).
MID_M = 1024
_A_KINDS = {torch.int8: 0, torch.float8_e4m3fn: -1, torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_PAIR_DTYPES = {torch.int8: torch.int16, torch.bfloat16: torch.int32, torch.float16: torch.int32,
                torch.float32: torch.int64}
_NO_SEGMENT = 2 ** 30  # OUT_SEG when all N tiles read one A: every N tile is in segment 0
CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=st)
           for bm, bn, bk, w, st in _BIG + _SMALL]


def graph_timed(kernel_call, quantiles):
    """The kernel timing of the autotuners and of ``ops.fastest_kernel``: calls replayed from a CUDA graph, so that a
    kernel of ten µs is timed and not its launch (timed eagerly, run 11's FLUX text-stream layers got tiles 25-40 %
    slower than the graph-timed ones); ``quantiles`` as ``triton.testing.do_bench_cudagraph`` (``None``: the mean)."""
    from triton.testing import do_bench_cudagraph

    return do_bench_cudagraph(kernel_call, quantiles=quantiles)


def tuned_or_first(configs: list) -> list:
    """``configs`` to autotune over, or only the first when ``SEGQUANT_TRITON_AUTOTUNE=0`` (tests)."""
    return configs[:1] if os.environ.get("SEGQUANT_TRITON_AUTOTUNE") == "0" else configs


def legal_configs(configs, named_args, **kwargs):
    """Configs whose BN divides ``OUT_SEG``, sized for M, BK >= 128 where legal; rescaled tiles (``TILE_SCALE``)
    exactly :func:`segquant.kernels.gemm_reference.scale_tile_k` wide, so that the float32 sum of the scaled tiles
    is the twin's whichever config wins (narrower K tiles only compete where the segments force them). Rescaled
    tiles of 64 rows compete at any M above 64: they hold a float32 and an int32 tile in fewer registers, so two
    programs share an SM and one's rescale can run during the other's MMA (the 128 x 256 ones spill, ptxas on sm_90)."""
    args = {**named_args, **kwargs}
    m, k_align, out_seg, tile = args["M"], args["K_ALIGN"], args["OUT_SEG"], args["TILE_SCALE"]
    if tile:
        width = scale_tile_k(k_align, args["K"])
        fits = [c for c in configs if c.kwargs["BK"] == width and out_seg % c.kwargs["BN"] == 0]
        sized = [c for c in fits if row_tile_fits(c.kwargs["BM"], m) or (c.kwargs["BM"] == 64 and m > 64)]
        return tuned_or_first(sized or fits)
    fits = [c for c in configs if out_seg % c.kwargs["BN"] == 0
            and c.kwargs["BK"] <= max(32, triton.next_power_of_2(args["K"]))]
    sized = [c for c in fits if row_tile_fits(c.kwargs["BM"], m)] or fits
    widest = min(128, max(c.kwargs["BK"] for c in sized))
    if args["W4"] and args["MODE"] == 2:  # tiles inside one group (ONE_GROUP) compete too
        widest = min(widest, max(32, k_align))
    legal = [c for c in sized if c.kwargs["BK"] >= widest]
    return tuned_or_first(legal)


def row_tile_fits(bm: int, m: int) -> bool:
    """16/64-row tiles for ``M <= 64``, 128/256-row tiles above, and the 64-row tiles also up to :data:`MID_M`."""
    if m <= 64:
        return bm <= 64
    return bm >= 128 or (bm == 64 and m <= MID_M)


@triton.jit
def _load(a_ptrs, b_ptrs, k0, K, BK: tl.constexpr, DUAL: tl.constexpr, EVEN_K: tl.constexpr):
    """8-bit weights: the A tile (and DualScale's negative A tile, else A again) and the B tile at ``k0``."""
    if EVEN_K:
        a, b = tl.load(a_ptrs), tl.load(b_ptrs)
        a_neg = tl.load(a_ptrs + K) if DUAL else a
    else:
        k_ok = tl.arange(0, BK) < K - k0
        a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        a_neg = tl.load(a_ptrs + K, mask=k_ok[None, :], other=0.0) if DUAL else a
    return a, b.to(a.dtype), a_neg  # 16-bit inputs: integer codes are exact in bf16 / fp16


@triton.jit
def _split_pairs(p, A_KIND: tl.constexpr):
    """Pairs of inputs read as one wider integer -> (values at even k, values at odd k) in the compute dtype,
    little-endian. ``A_KIND`` 0: INT8 codes in int16 (-> fp16, exact); 1 / 2: bf16 / fp16 in int32;
    3: float32 in int64."""
    if A_KIND == 0:
        lo = ((p << 8) >> 8).to(tl.int8).to(tl.float16)
        hi = (p >> 8).to(tl.int8).to(tl.float16)
    elif A_KIND == 3:
        lo = p.to(tl.int32).to(tl.float32, bitcast=True)
        hi = (p >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    else:
        half: tl.constexpr = tl.bfloat16 if A_KIND == 1 else tl.float16
        lo = p.to(tl.int16).to(half, bitcast=True)
        hi = (p >> 16).to(tl.int16).to(half, bitcast=True)
    return lo, hi


@triton.jit
def _load_w4(a_ptrs, b_ptrs, w_rows, wcol_ptr, k0, K, BK: tl.constexpr, DUAL: tl.constexpr, EVEN_K: tl.constexpr,
             A_KIND: tl.constexpr, ONE_GROUP: tl.constexpr):
    """Packed INT4 weights: the K tile at ``k0`` as its even-k and odd-k halves, so that no register shuffle
    is needed: byte ``i`` of B holds codes ``2i`` (low nibble) and ``2i + 1`` (high nibble), and A is read as
    pairs (``a_ptrs`` in pair units). The codes are multiplied by their group's weight scale
    (``w_rows`` ``(BN,)`` pointers to the rows of ``w_scale``; a pair never straddles a group; ``ONE_GROUP``:
    the tile lies in one group). Returns
    ``(a_even, a_odd, b_even, b_odd, a_neg_even, a_neg_odd)`` in the compute dtype."""
    pairs = tl.arange(0, BK // 2)
    if EVEN_K:
        a, b = tl.load(a_ptrs), tl.load(b_ptrs)
        a_neg = tl.load(a_ptrs + K // 2) if DUAL else a
    else:
        pair_ok = pairs < (K - k0) // 2
        a = tl.load(a_ptrs, mask=pair_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=pair_ok[:, None], other=0)
        a_neg = tl.load(a_ptrs + K // 2, mask=pair_ok[None, :], other=0) if DUAL else a
    a_even, a_odd = _split_pairs(a, A_KIND)
    a_neg_even, a_neg_odd = _split_pairs(a_neg, A_KIND)
    codes = b.to(tl.int8, bitcast=True)
    b_even = ((codes << 4) >> 4).to(tl.float32)  # arithmetic shifts sign-extend the 4-bit two's complement
    b_odd = (codes >> 4).to(tl.float32)
    if ONE_GROUP:  # the tile lies in one group: one scale per output column
        scale = tl.load(w_rows + tl.load(wcol_ptr + k0))[None, :]
    else:  # several groups per tile (wide tiles for small M)
        group = tl.load(wcol_ptr + tl.minimum(k0 + 2 * pairs, K - 1))  # (BK/2,) scale column of each pair
        scale = tl.load(w_rows[None, :] + group[:, None])  # (BK/2, BN), L1-resident
    b_even, b_odd = b_even * scale, b_odd * scale
    ct: tl.constexpr = a_even.dtype
    return a_even, a_odd, b_even.to(ct), b_odd.to(ct), a_neg_even, a_neg_odd


#: FP8 sums are promoted to float32 every this many channels of K, whatever the K tile (as cuBLASLt does)
FP8_PROMOTE: tl.constexpr = tl.constexpr(KERNEL_PROMOTE_EVERY)


@triton.jit
def _dot(a, b, acc, INT_DOT: tl.constexpr, BK: tl.constexpr):
    """``acc += a @ b``: int32 for INT8 x INT8; FP8 promotes to float32 every ``FP8_PROMOTE`` channels or once per
    narrower K tile (Hopper's fast FP8 accumulation alone loses 2-4e-3 relative over long K; see
    :mod:`segquant.kernels.fp8_accumulation`); float32 inputs (W4A16 on a float32 model) in full precision, not TF32."""
    if INT_DOT:
        out = tl.dot(a, b, acc, out_dtype=tl.int32)
    elif a.dtype == tl.float32:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        PROMOTE: tl.constexpr = BK if BK < FP8_PROMOTE else FP8_PROMOTE
        out = tl.dot(a, b, acc, max_num_imprecise_acc=PROMOTE)
    return out


@triton.jit
def _tile(a_ptrs, b_ptrs, w_rows, wcol_ptr, k0, K, acc, acc_neg, BK: tl.constexpr, DUAL: tl.constexpr,
          EVEN_K: tl.constexpr, INT_DOT: tl.constexpr, W4: tl.constexpr, A_KIND: tl.constexpr,
          ONE_GROUP: tl.constexpr):
    """``acc += A_tile @ B_tile`` for the K tile at ``k0`` (and ``acc_neg`` with DualScale's negative A)."""
    if W4:
        a_even, a_odd, b_even, b_odd, an_even, an_odd = _load_w4(a_ptrs, b_ptrs, w_rows, wcol_ptr, k0, K, BK, DUAL,
                                                                  EVEN_K, A_KIND, ONE_GROUP)
        acc = _dot(a_odd, b_odd, _dot(a_even, b_even, acc, INT_DOT, BK // 2), INT_DOT, BK // 2)
        if DUAL:
            acc_neg = _dot(an_odd, b_odd, _dot(an_even, b_even, acc_neg, INT_DOT, BK // 2), INT_DOT, BK // 2)
    else:
        a, b, a_neg = _load(a_ptrs, b_ptrs, k0, K, BK, DUAL, EVEN_K)
        acc = _dot(a, b, acc, INT_DOT, BK)
        if DUAL:
            acc_neg = _dot(a_neg, b, acc_neg, INT_DOT, BK)
    return acc, acc_neg


@triton.jit
def _mainloop(a_ptrs, b_ptrs, w_rows, wcol_ptr, K, acc, acc_neg, BK: tl.constexpr, DUAL: tl.constexpr,
              EVEN_K: tl.constexpr, INT_DOT: tl.constexpr, W4: tl.constexpr, A_KIND: tl.constexpr,
              ONE_GROUP: tl.constexpr):
    """Accumulate the whole K into ``acc`` (and DualScale's ``acc_neg``)."""
    step: tl.constexpr = BK // 2 if W4 else BK  # A (pairs) and B (bytes) advance per K tile
    for k0 in range(0, K, BK):
        acc, acc_neg = _tile(a_ptrs, b_ptrs, w_rows, wcol_ptr, k0, K, acc, acc_neg, BK, DUAL, EVEN_K, INT_DOT, W4,
                             A_KIND, ONE_GROUP)
        a_ptrs += step
        b_ptrs += step
    return acc, acc_neg


#: ``1.5 · 2²³`` and its float32 bit pattern: see :func:`_small_int_to_float`.
MAGIC_FLOAT: tl.constexpr = tl.constexpr(12582912.0)
MAGIC_BITS: tl.constexpr = tl.constexpr(0x4B400000)


@triton.jit
def _small_int_to_float(x):
    """int32 ``x`` with ``|x| < 2²²`` -> float32, exact: ``x`` added to the bits of ``1.5 · 2²³`` lands in its
    mantissa (whose unit is 1 there), and subtracting ``1.5 · 2²³`` is exact. An integer add and a float add, where
    ``cvt.rn.f32.s32`` runs on the conversion unit at a quarter or less of their rate (it bounds the per-K-tile path,
    which converts every element once per K tile). Equal to ``x.to(tl.float32)`` for every such ``x``."""
    return (x + MAGIC_BITS).to(tl.float32, bitcast=True) - MAGIC_FLOAT


@triton.jit
def _to_float(part, SMALL: tl.constexpr):
    """An int32 (or float32) partial sum as float32; ``SMALL``: an INT8 x INT8 sum over at most 128 channels
    (``|part| ≤ 128 · 128²`` = 2²¹), converted by :func:`_small_int_to_float`."""
    if SMALL:
        out = _small_int_to_float(part)
    else:
        out = part.to(tl.float32)
    return out


@triton.jit
def _scaled(part, part_neg, s_rows, sn_rows, j, DUAL: tl.constexpr, SMALL: tl.constexpr = False):
    """``part · a_scale[:, j]`` (+ the negative side) as float32 (``SMALL``: see :func:`_to_float`)."""
    out = _to_float(part, SMALL) * tl.load(s_rows + j)[:, None]
    if DUAL:
        out += _to_float(part_neg, SMALL) * tl.load(sn_rows + j)[:, None]
    return out


@triton.jit
def tile_position(tile, num_m, num_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of output tile number ``tile``: groups of ``GROUP_M`` row tiles sweep the columns
    together, so the B tiles they share stay in L2."""
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    group_rows = min(num_m - first_m, GROUP_M)
    return first_m + (tile % group) % group_rows, (tile % group) // group_rows


@triton.autotune(configs=CONFIGS, key=["M_BUCKET", "N", "K", "K_ALIGN", "OUT_SEG", "MODE", "DUAL", "SA_ROWS", "W4",
                                       "TILE_SCALE"],
                 prune_configs_by={"early_config_prune": legal_configs}, do_bench=graph_timed)
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BK"] == 0,
                    "ONE_GROUP": lambda args: args["K_ALIGN"] % args["BK"] == 0})
@triton.jit
def _scaled_gemm_kernel(a_ptr, b_ptr, c_ptr, as_ptr, asn_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr, t_ptr, u_ptr,
                        M, N, K, M_BUCKET, K_ALIGN, OUT_SEG, SA_ROWS, RANK,
                        stride_as, stride_am, stride_bn, stride_cm, stride_ss, stride_sm, stride_wn, stride_tm,
                        stride_un,
                        MODE: tl.constexpr, DUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr,
                        R: tl.constexpr, IS_INT: tl.constexpr, W4: tl.constexpr, A_KIND: tl.constexpr,
                        TILE_SCALE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        GROUP_M: tl.constexpr, EVEN_K: tl.constexpr, ONE_GROUP: tl.constexpr):
    pid_m, pid_n = tile_position(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP_M)
    seg = (pid_n * BN) // OUT_SEG
    offs_m, offs_n = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
    step: tl.constexpr = BK // 2 if W4 else BK  # A pairs / B bytes per K tile
    offs_k = tl.arange(0, step)
    rm, rn = tl.where(offs_m < M, offs_m, 0), tl.where(offs_n < N, offs_n, 0)
    a_ptrs = a_ptr + seg * stride_as + rm[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + rn[None, :] * stride_bn + offs_k[:, None]
    s_rows = as_ptr + seg * stride_ss + rm * stride_sm
    sn_rows = asn_ptr + seg * stride_ss + rm * stride_sm
    w_rows = ws_ptr + rn * stride_wn
    INT_DOT: tl.constexpr = IS_INT and not W4  # packed INT4 weights compute in a float dtype
    zero = tl.zeros((BM, BN), tl.int32 if INT_DOT else tl.float32)
    if not TILE_SCALE:  # scales constant along K (or in B): one accumulation, input scales in the epilogue
        acc, acc_neg = _mainloop(a_ptrs, b_ptrs, w_rows, wcol_ptr, K, zero, zero, BK, DUAL, EVEN_K, INT_DOT, W4,
                                 A_KIND, ONE_GROUP)
        out = _scaled(acc, acc_neg, s_rows, sn_rows, tl.load(acol_ptr), DUAL)
    else:  # the scale changes along K: accumulate each K tile exactly, scale it, add it in float32
        tl.static_assert(BK <= 128 or not INT_DOT)  # the K tile's integer sum stays below 2^22 (_small_int_to_float)
        out = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            part, part_neg = _tile(a_ptrs, b_ptrs, w_rows, wcol_ptr, k0, K, zero, zero, BK, DUAL, EVEN_K, INT_DOT, W4,
                                   A_KIND, ONE_GROUP)
            part = _scaled(part, part_neg, s_rows, sn_rows, tl.load(acol_ptr + k0), DUAL, INT_DOT)
            if MODE == 2 and not W4:
                part = part * tl.load(w_rows + tl.load(wcol_ptr + k0))[None, :]
            out += part
            a_ptrs += step
            b_ptrs += step
    if MODE != 2 and not W4:
        out = out * tl.load(w_rows + tl.load(wcol_ptr))[None, :]
    finish_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK,
                HAS_BIAS, HAS_LR, R)


@triton.jit
def finish_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK,
                HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr):
    """The epilogue of a scaled ``(BM, BN)`` float32 tile: :func:`epilogue_terms`, then :func:`store_tile`."""
    rm, rn = tl.where(offs_m < M, offs_m, 0), tl.where(offs_n < N, offs_n, 0)
    out = epilogue_terms(out, rm, rn, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK, HAS_BIAS, HAS_LR, R)
    store_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm)


@triton.jit
def epilogue_terms(out, rm, rn, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK, HAS_BIAS: tl.constexpr,
                   HAS_LR: tl.constexpr, R: tl.constexpr):
    """A scaled ``(BM, BN)`` float32 tile of the rows ``rm`` x columns ``rn`` (clamped in range) plus the bias and the
    low-rank branch ``t (BM, R) @ Uᵀ (R, BN)`` (``R`` the rank padded to a power of 2 >= 16)."""
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    if HAS_LR:
        offs_r = tl.arange(0, R)
        t = tl.load(t_ptr + rm[:, None] * stride_tm + offs_r[None, :],
                    mask=(offs_r < RANK)[None, :], other=0.0)
        u = tl.load(u_ptr + rn[None, :] * stride_un + offs_r[:, None], mask=(offs_r < RANK)[:, None], other=0.0)
        out += tl.dot(t, u)
    return out


@triton.jit
def store_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm):
    """``out`` ``(BM, BN)`` stored in ``c``'s dtype at the rows ``offs_m`` x columns ``offs_n`` within ``M`` x ``N``."""
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def lowrank_args(lowrank_t, lowrank_up, placeholder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(t, u, rank)`` for a launch: the branch's contiguous factors, or ``placeholder`` twice and rank 0."""
    if lowrank_t is None:
        return placeholder, placeholder, 0
    return lowrank_t.contiguous(), lowrank_up.contiguous(), lowrank_up.shape[1]


def scale_strides(a_scale: torch.Tensor) -> tuple[int, int]:
    """Strides of ``a_scale`` ``(Sa, M|1, J)`` over segments and rows, 0 where that dimension is broadcast."""
    return (a_scale.stride(0) if a_scale.shape[0] > 1 else 0, a_scale.stride(1) if a_scale.shape[1] > 1 else 0)


def scaled_gemm_triton(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment: int,
                       scale_mode: int, k_align: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Launch the kernel; arguments as :func:`segquant.kernels.gemm_reference.scaled_gemm_reference`."""
    sa, m, _ = a.shape
    n, k = b.shape[0], a_col.shape[0]
    w4, is_int, a_kind = b.dtype == torch.uint8, a.dtype == torch.int8, _A_KINDS[a.dtype]
    if w4:  # A read as pairs (see _load_w4); strides below are then in pairs
        if k % 2:
            raise ValueError(f"packed INT4 weights need an even K (inputs are read in pairs), got K={k}")
        a, b = a.contiguous().view(_PAIR_DTYPES[a.dtype]), b.contiguous()
    else:
        a, b = k_contiguous(a), k_contiguous(b)
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    if m == 0:
        return out
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    neg = a_scale_neg.contiguous() if a_scale_neg is not None else a_scale
    t, u, rank = lowrank_args(lowrank_t, lowrank_up, ws)
    seg_stride, row_stride = scale_strides(a_scale)
    grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)  # noqa: E731
    launch(
        _scaled_gemm_kernel, grid, a, b, out, a_scale, neg, ws, a_col, w_col, bias if bias is not None else ws, t, u,
        m, n, k, triton.next_power_of_2(m), k_align, out_segment if sa > 1 else _NO_SEGMENT, a_scale.shape[1], rank,
        a.stride(0) if sa > 1 else 0, a.stride(1), b.stride(0), out.stride(0), seg_stride, row_stride, ws.stride(0),
        t.stride(0), u.stride(0),
        MODE=scale_mode, DUAL=a_scale_neg is not None, HAS_BIAS=bias is not None, HAS_LR=lowrank_t is not None,
        R=max(16, triton.next_power_of_2(rank)), IS_INT=is_int, W4=w4, A_KIND=a_kind,
        TILE_SCALE=input_scale_varies(a_scale, scale_mode) if w4 else rescaled_per_tile(a_scale, scale_mode),
        enable_fp_fusion=not rounds_as_twin(a, b))
    return out


def k_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself where its last (K) dimension is contiguous, as the kernels read it (their row strides are
    arguments): the K-slices of a split layer's input and weight are read in place, not copied per call."""
    return t if t.stride(-1) == 1 else t.contiguous()


def rounds_as_twin(a: torch.Tensor, b: torch.Tensor) -> bool:
    """8-bit codes times 8-bit codes of one kind (INT8, FP8): the tiled and persistent kernels are built without fused
    multiply-adds, so that their float32 epilogue rounds step by step as the twin's
    (:func:`segquant.kernels.gemm_reference.code_scaled_gemm`): INT8 to the bit, FP8 as far as the twin models its
    tensor-core sums."""
    return exact_integer(a, b) or a.dtype == b.dtype == torch.float8_e4m3fn


def exact_integer(a: torch.Tensor, b: torch.Tensor) -> bool:
    """INT8 codes times INT8 weights: the kernels sum their products exactly and are built without fused
    multiply-adds (``enable_fp_fusion=False``), so that each float32 step of the epilogue rounds as in the twin
    (:func:`segquant.kernels.gemm_reference.code_scaled_gemm`), to the bit. A few CUDA-core instructions per
    output element, or per element and K tile on the rescaled path."""
    return a.dtype == b.dtype == torch.int8
