"""The one-pass dequantization of packed INT4 weights beside the scaled GEMMs (:mod:`.triton_gemm`,
:mod:`.triton_gemv`).

:func:`dequantize_w4_triton`: packed codes ``(N, K/2)`` -> ``code · w_scale[n, w_col[k]]`` ``(N, K)`` in a
16-bit dtype, one pass; the compute-bound case multiplies that with cuBLAS (see ``ops.gemm``), since
dequantizing in the tiled kernel's registers keeps it at a fraction of the 16-bit tensor-core rate. With
two-level scales (uint8 steps 1..16 per group) it writes the exact INT8 weight ``code · step`` instead, for
the 8-bit tensor-core GEMM (``plan.seglinear_forward``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
