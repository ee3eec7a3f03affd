"""The tensor cores' FP8 sum as :mod:`segquant.kernels.fp8_accumulation` models it, computed on the CUDA cores.

For the emulated backend on CUDA with the model switched on (either alignment, with or without truncated group
sums): the pure-torch loop writes a ``(rows, N, group)`` tensor per step of K, minutes of memory traffic for one
FLUX.1-dev forward; this kernel keeps a
``BLOCK_M × BLOCK_N × group`` block of products in registers. The same arithmetic, so the same bits: every product
of two E4M3 values is exact in float32; scaling by ``2^(fraction_bits − E)`` (a power of two) and converting to int32
truncates each addend toward zero; the truncated addends of a group are integers whose sum stays below ``2^24``
(``Accumulation.float32_exact``), summed exactly in any order; a truncated group sum is rescaled the same way; the
accumulator is added to the float32 total at each promotion, rounded to nearest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

if TYPE_CHECKING:  # the model module calls this one
    from segquant.kernels.fp8_accumulation import Accumulation

BLOCK = 16  # outputs per program along M and along N: a 16 × 16 × group block of products
#: Exponents below this are those of an all-zero group and accumulator (any unit works there); it keeps the
#: powers of two built from the exponent normal.
_LOWEST_EXPONENT = tl.constexpr(-100)
#: E4M3's smallest normal exponent, which its subnormal codes count with (``product_exponents``).
_E4M3_MIN_EXPONENT = tl.constexpr(-6)
#: The exponent a zero factor or accumulator counts with: below any real one, so that it never sets the alignment.
_ZERO_EXPONENT = tl.constexpr(-1000)


def warps_for(group: int) -> int:
    """Warps per program: 32 products of the block per thread (groups of 32 spill at 4 warps: sm_90, Triton 3.6)."""
    return max(1, BLOCK * BLOCK * group // (32 * 32))


@triton.jit
def _exponent(x):
    """``⌊log2 x⌋`` of positive normal float32 elements, from the exponent bits (−127 for zero)."""
    return ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _powers_of_two(exponent, FRACTION_BITS: tl.constexpr):
    """``(2^(FRACTION_BITS − E), 2^(E − FRACTION_BITS))`` for each element's exponent ``E`` (int32), built from the
    exponent bits."""
    exponent = tl.maximum(exponent, _LOWEST_EXPONENT)
    up = ((FRACTION_BITS - exponent + 127) << 23).to(tl.float32, bitcast=True)
    unit = ((exponent - FRACTION_BITS + 127) << 23).to(tl.float32, bitcast=True)
    return up, unit


@triton.jit
def _code_exponents(x):
    """``⌊log2 |x|⌋`` of E4M3 values held in float32, at least E4M3's −6 (subnormals); far below any for zeros."""
    return tl.where(x == 0, _ZERO_EXPONENT, tl.maximum(_exponent(tl.abs(x)), _E4M3_MIN_EXPONENT))


@triton.jit
def _group_exponent(a, b, products, acc, PRODUCT_EXPONENTS: tl.constexpr):
    """The exponent ``(BLOCK_M, BLOCK_N)`` a group's addends are truncated below: of the largest product and the
    accumulator, or the largest of the products' exponent sums and the accumulator's exponent."""
    if PRODUCT_EXPONENTS:
        sums = _code_exponents(a)[:, None, :] + _code_exponents(b)[None, :, :]
        acc_exponent = tl.where(acc == 0, _ZERO_EXPONENT, _exponent(tl.abs(acc)))
        exponent = tl.maximum(tl.max(sums, axis=2), acc_exponent)
    else:
        exponent = _exponent(tl.maximum(tl.max(tl.abs(products), axis=2), tl.abs(acc)))
    return exponent


@triton.jit
def _tensor_core_sum_kernel(a_ptr, b_ptr, out_ptr, M, N, K, stride_am, stride_bn, stride_om,
                            GROUP: tl.constexpr, FRACTION_BITS: tl.constexpr, PROMOTE_GROUPS: tl.constexpr,
                            PRODUCT_EXPONENTS: tl.constexpr, TRUNCATE_RESULT: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, GROUP)
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, tl.cdiv(K, GROUP)):
        k = g * GROUP + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :], mask=(rm[:, None] < M) & (k[None, :] < K),
                    other=0.0).to(tl.float32)
        b = tl.load(b_ptr + rn[:, None] * stride_bn + k[None, :], mask=(rn[:, None] < N) & (k[None, :] < K),
                    other=0.0).to(tl.float32)
        products = a[:, None, :] * b[None, :, :]  # (BLOCK_M, BLOCK_N, GROUP), exact
        up, unit = _powers_of_two(_group_exponent(a, b, products, acc, PRODUCT_EXPONENTS), FRACTION_BITS)
        units = (acc * up).to(tl.int32).to(tl.float32)
        units += tl.sum((products * up[:, :, None]).to(tl.int32).to(tl.float32), axis=2)
        acc = units * unit
        if TRUNCATE_RESULT:
            up, unit = _powers_of_two(_exponent(tl.abs(acc)), FRACTION_BITS)
            acc = (acc * up).to(tl.int32).to(tl.float32) * unit
        if PROMOTE_GROUPS > 0:
            promote = (g + 1) % PROMOTE_GROUPS == 0
            total = tl.where(promote, total + acc, total)
            acc = tl.where(promote, 0.0, acc)
    out = total + acc
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


def tensor_core_sum_triton(a: Tensor, b: Tensor, model: Accumulation) -> Tensor:
    """``segquant.kernels.fp8_accumulation.tensor_core_sum`` for a model of the float32-exact family
    (:attr:`Accumulation.float32_exact`): ``a`` ``(M, K)`` and ``b`` ``(N, K)`` E4M3 codes -> ``(M, N)`` float32. The
    codes travel as fp16, which holds every E4M3 value."""
    a16, b16 = a.to(torch.float16).contiguous(), b.to(torch.float16).contiguous()
    m, k = a16.shape
    n = b16.shape[0]
    out = torch.empty(m, n, device=a.device, dtype=torch.float32)
    promote = 0 if model.promote_every is None else model.promote_every // model.group
    grid = (triton.cdiv(m, BLOCK), triton.cdiv(n, BLOCK))
    _tensor_core_sum_kernel[grid](a16, b16, out, m, n, k, a16.stride(0), b16.stride(0), out.stride(0),
                                  GROUP=model.group, FRACTION_BITS=model.fraction_bits, PROMOTE_GROUPS=promote,
                                  PRODUCT_EXPONENTS=model.product_exponents, TRUNCATE_RESULT=model.truncate_result,
                                  BLOCK_M=BLOCK, BLOCK_N=BLOCK, num_warps=warps_for(model.group))
    return out
