"""Pure-torch twin of the ``segquant::scaled_gemm`` op (same arguments, any device, float32 math).

For output row ``n`` of output segment ``s(n)`` and input channel ``k``:

    y[m, n] = Σ_k a_scale[s, m, ac(k)] · w_scale[n, wc(k)] · a[s, m, k] · b[n, k]
              (+ Σ_k a_scale_neg[s, m, ac(k)] · w_scale[n, wc(k)] · a[s, m, K + k] · b[n, k])
              (+ bias[n]) (+ Σ_r lowrank_t[m, r] · lowrank_up[n, r])

``a`` ``(Sa, M, K·(1+dual))`` int8 / float8 codes (DualScale: ``[q⁺ | q⁻]``), or the bf16 / fp16 input
itself with ``a_scale`` 1 (W4A16); ``b`` ``(N, K)`` 8-bit codes or packed INT4 codes, uint8
``(N, ⌈K/2⌉)`` (:func:`segquant.numerics.pack_int4`); ``a_scale`` ``(Sa, M|1, JA)`` float32, ``w_scale``
``(N, G)`` float32, ``a_col`` / ``w_col`` ``(K,)`` the scale columns (``K`` is ``a_col``'s length),
``lowrank_t`` ``(M, r)`` / ``lowrank_up`` ``(N, r)`` the optional 16-bit low-rank branch (its down-projected
input and up-projection; added in float32 in the epilogue), ``out_segment`` rows per output
segment when ``Sa > 1``. Packed INT4 weights are dequantized to a 16-bit compute dtype, as the GPU has no
INT4 tensor cores: ``code · w_scale`` is rounded once to fp16 for INT8 input codes, to the input's dtype
for bf16 / fp16 inputs (``INT4_COMPUTE``; the emulated SegLinear rounds the same way).

INT8 codes times INT8 weight codes (:func:`code_scaled_gemm`) are computed as the kernels compute them, to the
bit: the products summed exactly (the kernels' int32 accumulator), rounded once to float32, then the kernels'
float32 epilogue in their order (input scale, DualScale's second side, weight scale, bias; where a scale changes
along K, per K tile of :func:`scale_tile_k` channels, each tile scaled and added in order). The kernels are built
without fused multiply-adds for these operands, so every float32 step rounds as here. Other operands (FP8,
packed INT4, 16-bit inputs) are summed in float32; the GPU kernels compute the same sum in another order, and Hopper's
tensor cores sum FP8 products with their addends truncated 13 bits below the largest (about 6.9e-4 of a layer's
output). With a model of that sum switched on (:mod:`segquant.kernels.fp8_accumulation`), FP8 x FP8 takes the INT8
path's structure and order with the model's sums (:func:`code_scaled_gemm`): what the Triton kernels compute, built
without fused multiply-adds for these operands too and promoting every ``KERNEL_PROMOTE_EVERY`` channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from segquant.kernels.fp8_accumulation import EMULATED_FP8, KERNEL_PROMOTE_EVERY, tensor_core_sum
from segquant.numerics import unpack_int4


#: Input dtype -> the dtype a dequantized packed-INT4 weight is rounded to (absent: kept in float32).
INT4_COMPUTE = {torch.int8: torch.float16, torch.bfloat16: torch.bfloat16, torch.float16: torch.float16}


#: Depth up to which a float32 sum of 8-bit integer products is exact in any order (every partial sum is an
#: integer of magnitude at most 128² · 1024 = 2²⁴).
EXACT_DEPTH = 1024
#: K tile widths of the kernel's rescaled path, widest first.
_SCALE_TILES = (128, 64, 32)


def input_scale_varies(a_scale: Tensor, scale_mode: int) -> bool:
    """Whether the input scale changes along K (``scale_mode`` > 0 and more than one scale column)."""
    return scale_mode > 0 and a_scale.shape[2] > 1


def rescaled_per_tile(a_scale: Tensor, scale_mode: int) -> bool:
    """Whether the 8-bit GEMM scales and adds every K tile on its own: the input scale or the weight scale changes
    along K (``scale_mode`` 2; packed INT4 weights take theirs in the dequantized tile instead)."""
    return input_scale_varies(a_scale, scale_mode) or scale_mode == 2


def scale_tile_k(k_align: int, k: int) -> int:
    """The K tile (channels) of the rescaled path: the widest of 128 / 64 / 32 that divides ``k_align`` and is at
    most ``max(32, next power of 2 ≥ k)``; the kernel's tile configs compete only at this width, so the float32
    sum of the scaled tiles is fixed. An alignment below 32 (no kernel runs it) gives its largest power-of-2
    divisor."""
    bound = max(32, 1 << max(k - 1, 0).bit_length())
    for width in _SCALE_TILES:
        if k_align % width == 0 and width <= bound:
            return width
    return k_align & -k_align


def integer_products(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_k a[m, k] · b[n, k]`` for 8-bit integer codes ``a`` ``(M, K)`` and ``b`` ``(N, K)`` (any dtype holding
    them) -> ``(M, N)`` float32: the exact integer sum rounded once to float32, as the kernels convert their
    int32 accumulator. Float32 products in chunks of :data:`EXACT_DEPTH` channels, each exact whatever the
    summation order (TF32 included: it holds 8-bit integers exactly), the chunks summed in float64."""
    a, b = a.float(), b.float()
    if a.shape[-1] <= EXACT_DEPTH:
        return a @ b.T
    chunks = range(0, a.shape[-1], EXACT_DEPTH)
    total = sum((a[:, k0:k0 + EXACT_DEPTH] @ b[:, k0:k0 + EXACT_DEPTH].T).double() for k0 in chunks)
    return total.float()


def code_scaled_gemm(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Tensor | None, w_scale: Tensor,
                     a_col: Tensor, w_col: Tensor, out_segment: int, scale_mode: int, k_align: int,
                     products: Callable[[Tensor, Tensor], Tensor] = integer_products) -> Tensor:
    """8-bit codes ``a`` ``(Sa, M, K·(1+dual))`` x 8-bit weight codes ``b`` ``(N, K)`` -> ``(M, N)`` float32 before the
    bias, in the kernels' order (module doc; arguments as :func:`scaled_gemm_reference`): ``products`` sums the codes'
    products of each constant-scale K stretch (:func:`integer_products` for INT8 x INT8: bitwise the kernels';
    FP8 x FP8: the tensor cores' model, :func:`fp8_products`)."""
    k = a_col.shape[0]
    width = scale_tile_k(k_align, k) if rescaled_per_tile(a_scale, scale_mode) else k
    a_cols, w_cols = a_col.tolist(), w_col.tolist()
    outputs = []
    for s in range(a.shape[0]):
        rows = slice(s * out_segment, (s + 1) * out_segment) if a.shape[0] > 1 else slice(None)
        weight, scale = b[rows], w_scale[rows]
        out = torch.zeros(a.shape[1], weight.shape[0], device=a.device)
        for k0 in range(0, k, width):
            cols, j = slice(k0, min(k0 + width, k)), a_cols[k0]
            part = products(a[s, :, cols], weight[:, cols]) * a_scale[s, :, j:j + 1]
            if a_scale_neg is not None:
                negative = products(a[s, :, k + k0:k + cols.stop], weight[:, cols])
                part = part + negative * a_scale_neg[s, :, j:j + 1]
            if scale_mode == 2:
                part = part * scale[:, w_cols[k0]]
            out = out + part
        outputs.append(out if scale_mode == 2 else out * scale[:, w_cols[0]])
    return torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]


def fp8_products(a: Tensor, b: Tensor) -> Tensor:
    """``Σ_k a[m, k] · b[n, k]`` for E4M3 codes as the tensor-core model switched on sums them
    (``fp8_accumulation.EMULATED_FP8``), promoted every ``KERNEL_PROMOTE_EVERY`` channels -> ``(M, N)`` float32."""
    return tensor_core_sum(a, b, replace(EMULATED_FP8["accumulation"], promote_every=KERNEL_PROMOTE_EVERY))


def blockwise_gemm(gemm, a: Tensor, b: Tensor, a_scale: Tensor, w_scale: Tensor, a_col: Tensor, w_col: Tensor,
                   bias: Tensor | None, blocks: tuple[int, ...]) -> Tensor:
    """A GEMM whose scales change along K only at ``blocks`` (first channels of the constant-scale K blocks; see
    ``GemmLayout.split_blocks``), as one call of ``gemm`` (the op or this twin; same arguments) per block on K-slices
    of ``a`` ``(1, M, K)`` and ``b`` ``(N, K)`` (views: the kernels read them in place) with scales constant along K
    (``scale_mode`` 0: the block's scale columns ``a_col[start]`` / ``w_col[start]``), the float32 partial products
    added in block order, then the bias -> ``(M, N)`` float32. INT8 x INT8: the same on both backends to the bit."""
    ends = (*blocks[1:], a_col.shape[0])
    out = None
    for start, end in zip(blocks, ends):
        part = gemm(a[:, :, start:end], b[:, start:end], a_scale, None, w_scale, a_col[start:end], w_col[start:end],
                    None, None, None, b.shape[0], 0, 0, torch.float32)
        out = part if out is None else out + part
    return out if bias is None else out + bias.float()


def dequantized_input(a: Tensor, a_scale: Tensor, a_scale_neg: Tensor | None, a_col: Tensor, k: int) -> Tensor:
    """``(Sa, M, K)`` float32: the input the GEMM multiplies, ``q · scale`` (DualScale: both sides summed)."""
    cols = a_col.long()
    x = a[..., :k].float() * a_scale[..., cols]
    if a_scale_neg is not None:
        x = x + a[..., k:].float() * a_scale_neg[..., cols]
    return x


def scaled_gemm_reference(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Tensor | None, w_scale: Tensor,
                          a_col: Tensor, w_col: Tensor, bias: Tensor | None, lowrank_t: Tensor | None,
                          lowrank_up: Tensor | None, out_segment: int, scale_mode: int, k_align: int,
                          out_dtype: torch.dtype) -> Tensor:
    """The op's math (module doc) -> ``(M, N)`` in ``out_dtype``. ``scale_mode`` (0: scales constant along K,
    1: input scales vary along K, 2: weight scales too) and ``k_align`` (gcd of the positions where a scale
    changes) steer the kernel and, for INT8 x INT8, the order of the float32 epilogue."""
    if a.dtype == b.dtype == torch.int8:
        y = code_scaled_gemm(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, out_segment, scale_mode, k_align)
    elif a.dtype == b.dtype == torch.float8_e4m3fn and EMULATED_FP8["accumulation"] is not None:
        y = code_scaled_gemm(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, out_segment, scale_mode, k_align,
                             fp8_products)
    else:
        y = _per_segment(dequantized_input(a, a_scale, a_scale_neg, a_col, a_col.shape[0]),
                         _dequantized_weight(b, w_scale, w_col, a.dtype, a_col.shape[0]), out_segment)
    if bias is not None:
        y = y + bias.float()
    if lowrank_t is not None:
        y = y + lowrank_t.float() @ lowrank_up.float().T
    return y.to(out_dtype)


def _dequantized_weight(b: Tensor, w_scale: Tensor, w_col: Tensor, a_dtype: torch.dtype, k: int) -> Tensor:
    """``(N, K)`` float32 ``code · w_scale[n, w_col[k]]`` (packed INT4: rounded once to ``INT4_COMPUTE[a_dtype]``)."""
    packed_int4 = b.dtype == torch.uint8
    w = (unpack_int4(b, k) if packed_int4 else b).float() * w_scale[:, w_col.long()]
    return w.to(INT4_COMPUTE[a_dtype]).float() if packed_int4 and a_dtype in INT4_COMPUTE else w


def _per_segment(x: Tensor, w: Tensor, out_segment: int) -> Tensor:
    """``x`` ``(Sa, M, K)`` times ``w`` ``(N, K)``ᵀ, output segment ``s`` from ``x[s]`` -> ``(M, N)``."""
    if x.shape[0] == 1:
        return x[0] @ w.T
    return torch.cat([x[s] @ w[s * out_segment:(s + 1) * out_segment].T for s in range(x.shape[0])], dim=-1)
