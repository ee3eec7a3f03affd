"""What the scaled GEMM needs from a ``SegLinear``: the packed tensors and the forward data flow (the layout that
chooses the kernel variant: :mod:`segquant.kernels.layout`).

Packing (:func:`pack_tensors`, pure torch, any device) reads the canonical buffers and builds:

====================  ================  =====================================================
name                  shape / dtype     meaning
====================  ================  =====================================================
``gpu_in_mul``        (Sa, K) float32   static inputs: ``c = 1 / (λ_s · input_scale[s, j(k)])``
``gpu_in_mul_neg``    (Sa, K) float32   static DualScale: the same with ``input_scale_neg``
``gpu_a_scale``       (Sa, 1, J)        static input scales applied by the GEMM
``gpu_a_scale_neg``   (Sa, 1, J)        static DualScale negative-side scales
``gpu_a_col``         (K,) int32        input-scale column of every input channel
``gpu_w_col``         (K,) int32        weight-scale column of every input channel (all 0 when
                                        every column of ``weight_scale`` holds the same values)
``gpu_unit_scale``    (1, 1, 1)         W4A16 (16-bit inputs): the input "scale" 1
``gpu_zero_col``      (K,) int32        two-level INT4 with INT8 inputs: all 0, the row base is
                                        the one scale column of the expanded INT8 weight
``gpu_fp8_columns``   (1, N) float32    plain static FP8 layers: ``input_scale · w_scale[n]``, the
                                        column scales of ``torch._scaled_mm``'s row-wise FP8 GEMM;
                      () float32        where every ``w_scale[n]`` is the same (per-tensor weights):
                                        the one scale of its tensor-wise GEMM (cuBLASLt)
``gpu_fp8_rows``      (R, 1) float32    the same layers: ones, one tensor shared by all of them
                                        (``ops.unit_row_scales``), sliced to the call's rows (a
                                        module moved after packing gets its own 256 KB copy);
                      () float32        tensor-wise layers: a one
====================  ================  =====================================================

``Sa`` is the number of differently quantized inputs: ``S`` with per-output-segment smoothing, else 1
(without smoothing the emulated forward quantizes once, with segment 0's scales). The weight codes
(8-bit ``(N, K)``, K-major as the tensor cores want 8-bit operands, or int4 packed two per byte
``(N, ⌈K/2⌉)``, unpacked in the kernel's registers) and the scales are used as they are: nothing
of the weight is copied (two-level INT4: the integer ``weight_steps`` are the group scales of the GEMM,
in float per call, ``(N, G)`` elements, and the row bases ``weight_scale`` scale its float32 output). The low-rank
branch (``lowrank_down`` holds ``D_s / λ_s``, so it reads the unsmoothed input) of a layer with one output
segment runs in the GEMM's epilogue (``t = x Dᵀ`` first, ``(M, r)`` 16-bit); with several segments
(AdaLN chunks, small M) it runs as 16-bit torch products added to the float32 output.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.kernels.gemm_reference import blockwise_gemm
from segquant.kernels.gpu.ops import (DEQUANTIZE_MIN_M, GEMV_MAX_M_8BIT, USE_SCALED_MM, dequantize_w4, plain_fp8,
                                     unit_row_scales)
from segquant.kernels.layout import GemmLayout, input_columns, layout_of, weight_columns
from segquant.kernels.quant import StaticInput, folded_fp8_columns, gemm_input, static_input


def pack_tensors(module, layout: GemmLayout | None = None) -> dict[str, Tensor]:
    """The packed tensors of the table above, on the module's device (``layout``: the module's, if the caller
    has it already)."""
    spec, device = module.spec, module.weight_codes.device
    packed = {"gpu_a_col": input_columns(spec).to(device),
              "gpu_w_col": weight_columns(module).to(device)}
    if spec.input_dtype is None:
        packed["gpu_unit_scale"] = torch.ones(1, 1, 1, device=device)
        return packed
    packed.update(_two_level_tensors(module))
    if spec.input_dynamic:
        return packed
    layout = layout or layout_of(module)
    static = static_input(module.input_scale, module.input_scale_neg if spec.dual_scale else None, module.smooth,
                          spec.input_segments, layout.input_rows)
    packed.update({"gpu_in_mul": static.mul, "gpu_a_scale": static.a_scale})
    if spec.dual_scale:
        packed.update({"gpu_in_mul_neg": static.mul_neg, "gpu_a_scale_neg": static.a_scale_neg})
    packed.update(_static_fp8_tensors(module, layout, packed["gpu_w_col"]))
    return packed


def _static_fp8_tensors(module, layout: GemmLayout, w_col: Tensor) -> dict[str, Tensor]:
    """Plain static FP8 layers (``layout.plain_static_fp8``): the column scales with the input scale folded in and the
    shared unit row scales, so a call passes ``torch._scaled_mm`` its scales without building them; else nothing.
    Where all the column scales are equal (per-tensor weights), the one scale and a one, both 0-dim: the call then
    takes the tensor-wise FP8 GEMM (cuBLASLt), 6-11 % faster on an H100 than the row-wise one (a CUTLASS kernel of
    PyTorch's on sm_90) with the same codes on every compute-bound FLUX.1-dev and SD3.5-medium shape (BENCHMARKS.md,
    run 17)."""
    if not layout.plain_static_fp8:
        return {}
    columns = folded_fp8_columns(module.input_scale, module.weight_scale, w_col)
    if bool((columns == columns[0]).all()):
        return {"gpu_fp8_columns": columns[0].clone(), "gpu_fp8_rows": torch.ones((), device=columns.device)}
    return {"gpu_fp8_columns": columns.reshape(1, -1).contiguous(), "gpu_fp8_rows": unit_row_scales(columns.device)}


def _two_level_tensors(module) -> dict[str, Tensor]:
    """Two-level INT4 weights with INT8 inputs (large GEMMs expand them to INT8): the zero column map of the
    expanded weight's one scale column; else nothing."""
    if module.weight_steps is None or module.spec.input_dtype is not DType.INT8:
        return {}
    return {"gpu_zero_col": torch.zeros(module.in_features, dtype=torch.int32, device=module.weight_steps.device)}


GemmFn = Callable[..., Tensor]


def fused_lowrank(module) -> bool:
    """Whether the layer's low-rank branch runs in the GEMM's epilogue (a branch and one output segment)."""
    return module.lowrank_up is not None and len(module.spec.output_segments) == 1


def quantize_input(module, rows: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``rows`` ``(M, K)`` -> codes ``(Sa, M, K·(1+dual))``, scales ``(Sa, M|1, JA)``, negative scales
    (:func:`segquant.kernels.quant.gemm_input`, with the packed static multipliers).

    W4A16 (inputs not quantized): the 16-bit rows themselves, ``(1, M, K)``, with scale 1."""
    spec = module.spec
    if spec.input_dtype is None:
        return rows.unsqueeze(0), module.gpu_unit_scale, None
    static = None if spec.input_dynamic else StaticInput(
        module.gpu_in_mul, module.gpu_a_scale, getattr(module, "gpu_in_mul_neg", None),
        getattr(module, "gpu_a_scale_neg", None))
    return gemm_input(rows, spec.input_dtype, static, module.smooth, spec.input_segments, spec.input_granularity,
                      spec.dual_scale)


def seglinear_forward(module, layout: GemmLayout, x: Tensor, gemm: GemmFn) -> Tensor:
    """``x`` ``(..., K)`` -> ``(..., N)`` in ``x.dtype``: quantize, one scaled GEMM (low-rank branch in its
    epilogue where :func:`fused_lowrank`, else added afterwards; plain static FP8 layers call ``torch._scaled_mm`` with
    their packed scales, :func:`static_fp8_gemm`; a few long constant-scale K blocks, ``layout.split_blocks``: one
    plain GEMM per block, :func:`segquant.kernels.gemm_reference.blockwise_gemm`). Packed INT4 with two-level scales
    and at least ``DEQUANTIZE_MIN_M`` rows: the weight expanded to INT8 (``code · step``) for the 8-bit tensor cores,
    the per-row base as its scale."""
    rows = x.reshape(-1, module.in_features)
    codes, a_scale, a_scale_neg = quantize_input(module, rows)
    if layout.split_blocks:
        y = blockwise_gemm(gemm, codes, module.weight_codes, a_scale, module.weight_scale, module.gpu_a_col,
                           module.gpu_w_col, module.bias, layout.blocks)
        if module.lowrank_up is not None:
            y = y + lowrank_branch(module, rows)
        return y.to(x.dtype).reshape(*x.shape[:-1], module.out_features)
    if static_fp8_fits(module, codes, x.dtype):
        return static_fp8_gemm(module, codes, x.dtype).reshape(*x.shape[:-1], module.out_features)
    weight, w_scale, w_col, mode, row_scale = _weight_operands(module, layout, rows.shape[0])
    fused = fused_lowrank(module) and row_scale is None
    separate = module.lowrank_up is not None and not fused
    finish = separate or row_scale is not None  # completed here in float32, rounded once
    down_projected = rows.to(module.lowrank_up.dtype) @ module.lowrank_down[0].T if fused else None  # (M, r)
    y = gemm(codes, weight, a_scale, a_scale_neg, w_scale, module.gpu_a_col, w_col,
             None if row_scale is not None else module.bias, down_projected, module.lowrank_up if fused else None,
             layout.out_segment, mode, layout.k_align, torch.float32 if finish else x.dtype)
    if row_scale is not None:
        y = y * row_scale.T + (module.bias.float() if module.bias is not None else 0.0)
    if separate:
        y = y + lowrank_branch(module, rows)
    return y.to(x.dtype).reshape(*x.shape[:-1], module.out_features)


def static_fp8_fits(module, codes: Tensor, dtype: torch.dtype) -> bool:
    """A plain static FP8 layer on CUDA with a bf16 output (``torch._scaled_mm``'s row-wise FP8 writes bf16), more
    rows than the GEMV takes and, row-wise, at most ``UNIT_ROWS`` (and ``ops.USE_SCALED_MM`` on)."""
    rows = getattr(module, "gpu_fp8_rows", None)
    return (rows is not None and codes.is_cuda and dtype == torch.bfloat16 and USE_SCALED_MM["enabled"]
            and GEMV_MAX_M_8BIT < codes.shape[1] and (tensor_wise_fp8(module) or codes.shape[1] <= rows.shape[0]))


def tensor_wise_fp8(module) -> bool:
    """A plain static FP8 layer with one scale for its whole product: its packed ``torch._scaled_mm`` scales are 0-dim
    (cuBLASLt's tensor-wise GEMM)."""
    rows = getattr(module, "gpu_fp8_rows", None)
    return rows is not None and rows.dim() == 0


def static_fp8_gemm(module, codes: Tensor, dtype: torch.dtype) -> Tensor:
    """A plain static FP8 layer's product where :func:`static_fp8_fits`: ``codes`` ``(1, M, K)`` E4M3 ->
    ``(M, N)`` in ``dtype``, on ``torch._scaled_mm`` with the packed scales (tensor-wise where they are 0-dim)."""
    return plain_fp8(codes[0], module.weight_codes, _fp8_row_scales(module, codes.shape[1]), module.gpu_fp8_columns,
                     module.bias, dtype)


def _fp8_row_scales(module, m: int) -> Tensor:
    """The row scales of a plain static FP8 layer's call of ``m`` rows: the shared ones sliced to ``(m, 1)``, or the
    0-dim one of a tensor-wise layer."""
    rows = module.gpu_fp8_rows
    return rows if tensor_wise_fp8(module) else rows[:m]


def _weight_operands(module, layout: GemmLayout, m: int) -> tuple[Tensor, Tensor, Tensor, int, Tensor | None]:
    """``(weight, w_scale, w_col, scale_mode, row_scale)`` of the GEMM for ``m`` rows. Two-level INT4: from
    ``DEQUANTIZE_MIN_M`` rows with INT8 inputs the expanded INT8 weight with the row bases as its scale;
    otherwise the packed codes with the integer steps as scales (``code · step`` is exact in every compute
    dtype) and the row bases ``(N, 1)`` applied to the GEMM's float32 output (``row_scale``)."""
    if module.weight_steps is None:
        return module.weight_codes, module.weight_scale, module.gpu_w_col, layout.scale_mode, None
    if hasattr(module, "gpu_zero_col") and m >= DEQUANTIZE_MIN_M:  # INT8 tensor cores
        weight = dequantize_w4(module.weight_codes, module.weight_steps, module.gpu_w_col, torch.int8)
        return weight, module.weight_scale, module.gpu_zero_col, int(layout.input_varies), None
    return module.weight_codes, module.weight_steps.float(), module.gpu_w_col, layout.scale_mode, module.weight_scale


def lowrank_branch(module, rows: Tensor) -> Tensor:
    """``Σ_s (x D_sᵀ) U_sᵀ`` ``(M, N)`` float32 (``D_s`` holds ``1/λ_s``): ``t = x D_sᵀ`` in the branch's 16-bit
    dtype, ``t U_sᵀ`` in float32 (the rounding of the reference and of the fused epilogue)."""
    dtype, outputs, start = module.lowrank_up.dtype, [], 0
    for s, size in enumerate(module.spec.output_segments):
        t = rows.to(dtype) @ module.lowrank_down[s].T  # (M, r)
        outputs.append(t.float() @ module.lowrank_up[start:start + size].float().T)
        start += size
    return torch.cat(outputs, dim=-1)
