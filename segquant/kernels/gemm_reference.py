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
for bf16 / fp16 inputs (``INT4_COMPUTE``; the emulated SegLinear rounds the same way). The GPU kernels
compute the same sum, in int32 (INT8 x INT8) or float32, so they differ from this only by accumulation
order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.numerics import unpack_int4


#: Input dtype -> the dtype a dequantized packed-INT4 weight is rounded to (absent: kept in float32).
INT4_COMPUTE = {torch.int8: torch.float16, torch.bfloat16: torch.bfloat16, torch.float16: torch.float16}


def input_scale_varies(a_scale: Tensor, scale_mode: int) -> bool:
    """Whether the input scale changes along K (``scale_mode`` > 0 and more than one scale column)."""
    return scale_mode > 0 and a_scale.shape[2] > 1


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
    1: input scales vary along K, 2: weight scales too) and ``k_align`` only steer the kernel."""
    k = a_col.shape[0]
    packed_int4 = b.dtype == torch.uint8
    b = unpack_int4(b, k) if packed_int4 else b
    x = dequantized_input(a, a_scale, a_scale_neg, a_col, k)
    w = b.float() * w_scale[:, w_col.long()]
    if packed_int4 and a.dtype in INT4_COMPUTE:
        w = w.to(INT4_COMPUTE[a.dtype]).float()
    y = _per_segment(x, w, out_segment)
    if bias is not None:
        y = y + bias.float()
    if lowrank_t is not None:
        y = y + lowrank_t.float() @ lowrank_up.float().T
    return y.to(out_dtype)


def _per_segment(x: Tensor, w: Tensor, out_segment: int) -> Tensor:
    """``x`` ``(Sa, M, K)`` times ``w`` ``(N, K)``ᵀ, output segment ``s`` from ``x[s]`` -> ``(M, N)``."""
    if x.shape[0] == 1:
        return x[0] @ w.T
    return torch.cat([x[s] @ w[s * out_segment:(s + 1) * out_segment].T for s in range(x.shape[0])], dim=-1)
