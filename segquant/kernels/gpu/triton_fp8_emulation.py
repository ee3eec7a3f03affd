"""The tensor cores' FP8 sum as :mod:`segquant.kernels.fp8_accumulation` models it, computed on the CUDA cores.

For the emulated backend on CUDA with the model switched on: the pure-torch loop writes a ``(rows, N, group)``
tensor per step of K, minutes of memory traffic for one FLUX.1-dev forward; this kernel keeps a
``BLOCK_M × BLOCK_N × group`` block of products in registers. The same arithmetic, so the same bits: every product
of two E4M3 values is exact in float32; scaling by ``2^(fraction_bits − E)`` (a power of two) and converting to int32
truncates each addend toward zero; the truncated addends of a group are integers below ``2^(fraction_bits + 6)``,
summed exactly in any order; the accumulator is added to the float32 total at each promotion, rounded to nearest.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 16  # outputs per program along M and along N: a 16 × 16 × 16 block of products, 64 per thread at 4 warps
#: Exponents below this are those of an all-zero group and accumulator (any unit works there); it keeps the
#: powers of two built from the exponent normal.
_LOWEST_EXPONENT = tl.constexpr(-100)


@triton.jit
def _powers_of_two(largest, FRACTION_BITS: tl.constexpr):
    """``(2^(FRACTION_BITS − E), 2^(E − FRACTION_BITS))`` for ``E = ⌊log2 largest⌋`` of each (positive or zero)
    element, built from the exponent bits."""
    exponent = ((largest.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent = tl.maximum(exponent, _LOWEST_EXPONENT)
    up = ((FRACTION_BITS - exponent + 127) << 23).to(tl.float32, bitcast=True)
    unit = ((exponent - FRACTION_BITS + 127) << 23).to(tl.float32, bitcast=True)
    return up, unit


@triton.jit
def _tensor_core_sum_kernel(a_ptr, b_ptr, out_ptr, M, N, K, stride_am, stride_bn, stride_om,
                            GROUP: tl.constexpr, FRACTION_BITS: tl.constexpr, PROMOTE_GROUPS: tl.constexpr,
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
        up, unit = _powers_of_two(tl.maximum(tl.max(tl.abs(products), axis=2), tl.abs(acc)), FRACTION_BITS)
        units = (acc * up).to(tl.int32).to(tl.float32)
        units += tl.sum((products * up[:, :, None]).to(tl.int32).to(tl.float32), axis=2)
        acc = units * unit
        if PROMOTE_GROUPS > 0:
            promote = (g + 1) % PROMOTE_GROUPS == 0
            total = tl.where(promote, total + acc, total)
            acc = tl.where(promote, 0.0, acc)
    out = total + acc
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out, mask=(rm[:, None] < M) & (rn[None, :] < N))


def tensor_core_sum_triton(a: Tensor, b: Tensor, group: int, fraction_bits: int, promote_every: int | None) -> Tensor:
    """``segquant.kernels.fp8_accumulation.tensor_core_sum`` for a model that truncates every addend and the
    accumulator (the float32-exact family; its ``group``, ``fraction_bits``, ``promote_every``): ``a`` ``(M, K)`` and
    ``b`` ``(N, K)`` E4M3 codes -> ``(M, N)`` float32. The codes travel as fp16, which holds every E4M3 value."""
    a16, b16 = a.to(torch.float16).contiguous(), b.to(torch.float16).contiguous()
    m, k = a16.shape
    n = b16.shape[0]
    out = torch.empty(m, n, device=a.device, dtype=torch.float32)
    promote = 0 if promote_every is None else promote_every // group
    grid = (triton.cdiv(m, BLOCK), triton.cdiv(n, BLOCK))
    _tensor_core_sum_kernel[grid](a16, b16, out, m, n, k, a16.stride(0), b16.stride(0), out.stride(0),
                                  GROUP=group, FRACTION_BITS=fraction_bits, PROMOTE_GROUPS=promote,
                                  BLOCK_M=BLOCK, BLOCK_N=BLOCK)
    return out
