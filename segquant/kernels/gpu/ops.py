"""``torch.library`` custom op ``segquant::w8a8_gemm``: CUDA -> Triton kernel (or cuBLASLt for plain FP8),
CPU -> the pure-torch twin, plus a fake implementation so ``torch.compile`` traces it without graph breaks.

Arguments and math: :func:`segquant.kernels.gemm_reference.w8a8_gemm_reference`. Importing this module does
not import Triton (the CUDA implementation imports it on first call).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from segquant.kernels.gemm_reference import w8a8_gemm_reference

#: Plain FP8 layers (no per-tile scales, no DualScale, one input) run on ``torch._scaled_mm`` when True.
USE_SCALED_MM = {"enabled": True}


@torch.library.custom_op("segquant::w8a8_gemm", mutates_args=())
def w8a8_gemm(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Optional[Tensor], w_scale: Tensor, a_col: Tensor,
              w_col: Tensor, bias: Optional[Tensor], out_segment: int, scale_mode: int, k_align: int,
              out_dtype: torch.dtype) -> Tensor:
    """Scaled 8-bit GEMM ``(Sa, M, KA) x (N, K) -> (M, N)`` (see the twin for the exact formula)."""
    return w8a8_gemm_reference(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_segment, scale_mode,
                               k_align, out_dtype)


@w8a8_gemm.register_kernel("cuda")
def _w8a8_gemm_cuda(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_segment, scale_mode, k_align,
                    out_dtype):
    if _scaled_mm_fits(a, b, a_scale_neg, scale_mode, out_dtype):
        return _scaled_mm(a[0], b, a_scale[0], w_scale.index_select(1, w_col[:1].long()), bias, out_dtype)
    from segquant.kernels.gpu.triton_gemm import w8a8_gemm_triton

    return w8a8_gemm_triton(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_segment, scale_mode,
                            k_align, out_dtype)


@w8a8_gemm.register_fake
def _w8a8_gemm_fake(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_segment, scale_mode, k_align,
                    out_dtype):
    return a.new_empty((a.shape[1], b.shape[0]), dtype=out_dtype)


def _scaled_mm_fits(a: Tensor, b: Tensor, a_scale_neg, scale_mode: int, out_dtype: torch.dtype) -> bool:
    return (USE_SCALED_MM["enabled"] and b.dtype == torch.float8_e4m3fn and scale_mode == 0 and a_scale_neg is None
            and a.shape[0] == 1 and out_dtype == torch.bfloat16 and b.shape[0] % 16 == 0 and b.shape[1] % 16 == 0)


def _scaled_mm(a: Tensor, b: Tensor, a_scale: Tensor, w_scale: Tensor, bias: Tensor | None, out_dtype) -> Tensor:
    """cuBLASLt FP8 with row-wise scales: ``a`` ``(M, K)``, ``a_scale`` ``(M|1, 1)``, ``w_scale`` ``(N, 1)``."""
    scale_a = a_scale.expand(a.shape[0], 1).contiguous()
    return torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=w_scale.reshape(1, -1).contiguous(),
                            bias=bias.to(out_dtype) if bias is not None else None, out_dtype=out_dtype)
