"""``torch.library`` custom op ``segquant::scaled_gemm``: CUDA -> the Triton kernel, CPU -> the pure-torch twin,
plus a fake implementation so ``torch.compile`` traces it without graph breaks.

:func:`gemm` is the one entry point (the backend, tests and benchmarks call it): plain FP8 layers on CUDA go
straight to cuBLASLt's ``torch._scaled_mm`` (an aten op that ``torch.compile`` lowers itself, with no Python
dispatch per call) unless ``USE_SCALED_MM`` is off, everything else to the custom op.

Arguments and math: :func:`segquant.kernels.gemm_reference.scaled_gemm_reference`. Importing this module does
not import Triton (the CUDA implementation imports it on first call).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from segquant.kernels.gemm_reference import scaled_gemm_reference

#: Plain FP8 layers (no per-tile scales, no DualScale, one input) run on ``torch._scaled_mm`` when True.
USE_SCALED_MM = {"enabled": True}


@torch.library.custom_op("segquant::scaled_gemm", mutates_args=())
def scaled_gemm(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Optional[Tensor], w_scale: Tensor,
                a_col: Tensor, w_col: Tensor, bias: Optional[Tensor], lowrank_t: Optional[Tensor],
                lowrank_up: Optional[Tensor], out_segment: int,
                scale_mode: int, k_align: int, out_dtype: torch.dtype) -> Tensor:
    """Scaled GEMM ``(Sa, M, KA) x (N, K) -> (M, N)``, 8- or 4-bit weights (see the twin for the exact formula)."""
    return scaled_gemm_reference(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up,
                                 out_segment, scale_mode, k_align, out_dtype)


@scaled_gemm.register_kernel("cuda")
def _scaled_gemm_cuda(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                      scale_mode, k_align, out_dtype):
    from segquant.kernels.gpu.triton_gemm import scaled_gemm_triton

    return scaled_gemm_triton(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up,
                              out_segment, scale_mode, k_align, out_dtype)


def gemm(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Optional[Tensor], w_scale: Tensor, a_col: Tensor,
         w_col: Tensor, bias: Optional[Tensor], lowrank_t: Optional[Tensor], lowrank_up: Optional[Tensor],
         out_segment: int, scale_mode: int, k_align: int, out_dtype: torch.dtype) -> Tensor:
    """The op's math; plain FP8 on CUDA without the custom op (same cuBLASLt call, visible to the compiler)."""
    if a.is_cuda and _scaled_mm_fits(a, b, a_scale_neg, lowrank_t, scale_mode, out_dtype):
        return _plain_fp8(a, b, a_scale, w_scale, bias, out_dtype)
    return scaled_gemm(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                       scale_mode, k_align, out_dtype)


@scaled_gemm.register_fake
def _scaled_gemm_fake(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                      scale_mode, k_align, out_dtype):
    return a.new_empty((a.shape[1], b.shape[0]), dtype=out_dtype)


def _scaled_mm_fits(a: Tensor, b: Tensor, a_scale_neg, lowrank_t, scale_mode: int, out_dtype: torch.dtype) -> bool:
    return (USE_SCALED_MM["enabled"] and b.dtype == torch.float8_e4m3fn and scale_mode == 0 and a_scale_neg is None
            and lowrank_t is None and a.shape[0] == 1 and out_dtype == torch.bfloat16 and b.shape[0] % 16 == 0
            and b.shape[1] % 16 == 0)


def _plain_fp8(a: Tensor, b: Tensor, a_scale: Tensor, w_scale: Tensor, bias: Tensor | None, out_dtype) -> Tensor:
    """cuBLASLt FP8 with row-wise scales: ``a`` ``(1, M, K)``, ``a_scale`` ``(1, M|1, 1)``, ``w_scale`` ``(N, G)``
    of which column 0 applies (``scale_mode`` 0: every input channel uses column 0, see ``plan.weight_columns``)."""
    scale_a = a_scale[0].expand(a.shape[1], 1).contiguous()
    return torch._scaled_mm(a[0], b.t(), scale_a=scale_a, scale_b=w_scale[:, :1].reshape(1, -1),
                            bias=bias.to(out_dtype) if bias is not None else None, out_dtype=out_dtype)
