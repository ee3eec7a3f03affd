"""The SegLinear math as pure functions of (input, buffers, spec): the numerics oracle of every kernel.

``y = x Wᵀ + b`` with ``W`` ``(N, K)``; for output segment ``s`` with SmoothQuant divisor ``λ_s`` ``(K,)``:

    y_s = Σ_j Q(x_j / λ_s,j) · Ŵ[s, j]ᵀ  (+ x · D_sᵀ · U_sᵀ  the low-rank branch, λ_s folded into D_s)

``j`` runs over input segments; ``Q`` is the input fake-quantizer (static scale per ``(s, j)`` or dynamic;
DualScale: one scale per sign, see :mod:`segquant.algorithms.dualscale`); ``Ŵ`` is the dequantized weight.
Everything is computed in float32 and the result is cast to ``x.dtype``, with departures that follow the
deployed kernels: INT4 weights are dequantized to a 16-bit compute dtype on the GPU (there are no INT4 tensor
cores), so ``Ŵ = code · scale`` is rounded once to it here too (:func:`int4_compute_dtype`); and INT8 inputs times
INT8 / INT6 weight codes (:func:`integer_exact`) are summed exactly over their codes and then scaled in the kernels'
float32 epilogue (:func:`code_forward`), so the GPU equals this to the bit; and, opt-in, FP8 x FP8 layers sum
their codes' products as a model of the tensor cores does, in the data flow of the GPU route they take
(:func:`tensor_core_forward`: cuBLASLt with folded scales; :func:`code_forward`: the Triton kernels;
:mod:`segquant.kernels.fp8_accumulation`). The buffers are those of
:class:`segquant.nn.seglinear.SegLinear` (its docstring lists shapes and dtypes), gathered in
:class:`SegLinearBuffers`. Nothing here modifies its inputs. The emulated backend runs exactly these
functions; a kernel is correct when it matches them (bitwise where it computes the same float32 ops).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from segquant.algorithms.dualscale import dynamic_fake_quant_dualscale, fake_quant_dualscale
from segquant.enums import DType
from segquant.nn.spec import SegLinearSpec
from segquant.kernels.fp8_accumulation import EMULATED_FP8, tensor_core_sum
from segquant.kernels.gemm_reference import INT4_COMPUTE, blockwise_gemm, scaled_gemm_reference
from segquant.kernels.layout import GEMV_MAX_M_8BIT, GemmLayout, gemm_layout, input_columns, weight_columns
from segquant.kernels.quant import folded_fp8_columns, folded_multiplier, gemm_input, per_channel, static_input
from segquant.numerics import (codes_of_storage, dequantize_codes, dynamic_fake_quant, fake_quant, quantize_static,
                               quantize_static_dual)


class SegLinearBuffers(NamedTuple):
    """The canonical buffers of a ``SegLinear`` (what save/load writes); ``None`` where the spec has none."""

    weight_codes: Tensor                 # (N, K) int8/int16/float8 codes, or the float weight; int4: (N, ⌈K/2⌉) uint8
    weight_scale: Tensor                 # (N, G) float32; two-level INT4: (N, 1), the row's base
    weight_col_group: Tensor             # (K,) int64: scale column of every weight column
    bias: Tensor | None = None           # (N,)
    smooth: Tensor | None = None         # (S, K) float32 SmoothQuant divisor
    input_scale: Tensor | None = None    # (S, J) float32 static input scale (DualScale: positive side)
    input_scale_neg: Tensor | None = None    # (S, J) float32 static DualScale negative-side scale
    input_zero_point: Tensor | None = None   # (S, J) float32 static asymmetric zero point
    lowrank_up: Tensor | None = None     # (N, r) 16-bit
    lowrank_down: Tensor | None = None   # (S, r, K) 16-bit
    weight_steps: Tensor | None = None   # (N, G) uint8, two-level INT4: group scale = base · step


def weight_scales(b: SegLinearBuffers) -> Tensor:
    """``(N, G)`` float32 scale of each row and scale column (two-level: ``base · step``)."""
    return b.weight_scale if b.weight_steps is None else b.weight_scale * b.weight_steps.float()


def dequantized_weight(b: SegLinearBuffers, spec: SegLinearSpec) -> Tensor:
    """``Ŵ`` ``(N, K)`` float32: codes times their row/column-group scale (without the low-rank branch)."""
    if spec.weight_dtype is None:
        return b.weight_codes.float()
    codes = codes_of_storage(b.weight_codes, spec.weight_dtype, spec.in_features)
    return dequantize_codes(codes, weight_scales(b)[:, b.weight_col_group])


def int4_compute_dtype(spec: SegLinearSpec, x_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a dequantized INT4 weight is rounded to where a GPU kernel exists: fp16 with INT8 input codes
    (exact for the codes), the input's dtype for 16-bit inputs of a weight-only layer; else ``None`` (kept
    in float32): the op twin's ``INT4_COMPUTE`` for the GEMM's input dtype. Two-level scales: ``None``, the
    GPU multiplies the exact integers ``code · step`` (fp16 and bf16 hold them) and scales the sum by the
    row's base."""
    if spec.weight_dtype is not DType.INT4 or spec.weight_two_level:
        return None
    gemm_input = torch.int8 if spec.input_dtype is DType.INT8 else x_dtype if spec.input_dtype is None else None
    return INT4_COMPUTE.get(gemm_input)


def quantize_input_part(part: Tensor, b: SegLinearBuffers, spec: SegLinearSpec, s: int, j: int) -> Tensor:
    """Fake-quantize input segment ``j`` ``(M, K_j)`` float32 for output segment ``s``."""
    if spec.input_dynamic:
        if spec.dual_scale:
            return dynamic_fake_quant_dualscale(part, spec.input_dtype, spec.input_granularity)
        return dynamic_fake_quant(part, spec.input_dtype, spec.input_granularity, spec.input_symmetric)
    scale = b.input_scale[s, j]
    if spec.dual_scale:
        return fake_quant_dualscale(part, scale, b.input_scale_neg[s, j], spec.input_dtype)
    zero_point = None if b.input_zero_point is None else b.input_zero_point[s, j]
    return fake_quant(part, scale, spec.input_dtype, zero_point)


def quantize_input(rows: Tensor, b: SegLinearBuffers, spec: SegLinearSpec, s: int) -> Tensor:
    """Fake-quantize the layer input ``rows`` ``(M, K)`` float32 (not smoothed) for output segment ``s``.

    Static symmetric inputs are quantized as the GPU does, with the folded multiplier
    ``1 / (λ_s · input_scale[s, j])`` (:func:`static_folded`); the others input segment by segment on
    ``x / λ_s``."""
    if spec.input_dtype is not None and not spec.input_dynamic and b.input_zero_point is None:
        return static_folded(rows, b, spec, s)
    smoothed = rows / b.smooth[s] if b.smooth is not None else rows
    if spec.input_dtype is None:
        return smoothed
    parts = smoothed.split(list(spec.input_segments), dim=-1)
    return torch.cat([quantize_input_part(part, b, spec, s, j) for j, part in enumerate(parts)], dim=-1)


def static_folded(rows: Tensor, b: SegLinearBuffers, spec: SegLinearSpec, s: int) -> Tensor:
    """Static symmetric fake-quantization of ``rows`` ``(M, K)``: codes ``round(x · c)`` with the per-channel
    :func:`folded_multiplier` ``c`` (DualScale: one per sign), times the scale: the GPU's one-pass quantizer,
    which differs from rounding ``(x / λ) / s`` only where a value lies within float32 rounding of a code
    boundary."""
    smooth = b.smooth[s:s + 1] if b.smooth is not None else None
    sides = [b.input_scale[s:s + 1]] + ([b.input_scale_neg[s:s + 1]] if spec.dual_scale else [])
    muls = [folded_multiplier(scale, smooth, spec.input_segments) for scale in sides]
    quantize = quantize_static_dual if spec.dual_scale else quantize_static
    codes = quantize(rows, *muls, spec.input_dtype)[0].float()  # (M, K·(1+dual)): [q⁺ | q⁻]
    k, scales = spec.in_features, [per_channel(scale, spec.input_segments)[0] for scale in sides]
    positive = codes[:, :k] * scales[0]
    return positive + codes[:, k:] * scales[1] if spec.dual_scale else positive


def lowrank_output(rows: Tensor, b: SegLinearBuffers, s: int, out_rows: slice) -> Tensor:
    """The 16-bit branch of output segment ``s``, ``x D_sᵀ U_sᵀ`` ``(M, n_s)`` float32 (``D_s`` holds ``1/λ_s``),
    rounded as the GPU computes it: the input and ``t = x D_sᵀ`` in the branch's dtype, ``t U_sᵀ`` in float32."""
    dtype = b.lowrank_down.dtype
    t = (rows.to(dtype).float() @ b.lowrank_down[s].float().T).to(dtype)
    return t.float() @ b.lowrank_up[out_rows].float().T


def integer_exact(b: SegLinearBuffers, spec: SegLinearSpec) -> bool:
    """INT8 symmetric inputs and 8-bit integer weight codes (INT8 / INT6, one byte each): the layers whose
    products the GPU sums exactly in int32, so that :func:`code_forward` reproduces its kernels bitwise."""
    return (spec.input_dtype is DType.INT8 and spec.input_symmetric and b.input_zero_point is None
            and b.weight_codes.dtype == torch.int8)


def fp8_modelled(b: SegLinearBuffers, spec: SegLinearSpec, m: int) -> bool:
    """With a model of the tensor cores' FP8 sum switched on (``fp8_accumulation.EMULATED_FP8``), a call of more rows
    than the GEMV takes of E4M3 symmetric inputs times E4M3 weights: its codes' products summed by the model, in
    cuBLASLt's data flow where :func:`on_scaled_mm` (:func:`tensor_core_forward`), else in the op's structure
    (:func:`code_forward`; the Triton kernels' data flow, also cuBLASLt's row-wise one)."""
    return (EMULATED_FP8["accumulation"] is not None and m > GEMV_MAX_M_8BIT and spec.input_dtype is DType.FP8E4M3
            and spec.input_symmetric and b.input_zero_point is None and b.weight_codes.dtype == torch.float8_e4m3fn)


def _input_codes(rows: Tensor, b: SegLinearBuffers, spec: SegLinearSpec,
                 layout: GemmLayout) -> tuple[Tensor, Tensor, Tensor | None]:
    """The GEMM's input as the GPU backend quantizes it (:func:`segquant.kernels.quant.gemm_input` with the layer's
    static multipliers): codes ``(Sa, M, K·(1+dual))``, scales ``(Sa, M|1, J)``, DualScale's negative scales."""
    static = None if spec.input_dynamic else static_input(
        b.input_scale, b.input_scale_neg if spec.dual_scale else None, b.smooth, spec.input_segments,
        layout.input_rows)
    return gemm_input(rows, spec.input_dtype, static, b.smooth, spec.input_segments, spec.input_granularity,
                      spec.dual_scale)


def code_forward(rows: Tensor, b: SegLinearBuffers, spec: SegLinearSpec, layout: GemmLayout) -> Tensor:
    """An :func:`integer_exact` or :func:`fp8_modelled` layer: ``rows`` ``(M, K)`` float32 -> ``(M, N)`` float32, the
    GPU backend's data flow (:mod:`segquant.kernels.gpu.plan`): the same codes and scales (:func:`_input_codes`), the
    op's sums (INT8 exact, FP8 by the model) and float32 epilogue with the bias
    (:func:`segquant.kernels.gemm_reference.code_scaled_gemm`; a few long constant-scale K blocks one GEMM each,
    ``blockwise_gemm``), then the low-rank branch."""
    codes, a_scale, a_scale_neg = _input_codes(rows, b, spec, layout)
    a_col, w_col = input_columns(spec), weight_columns(b)
    bounds = torch.tensor((0,) + spec.output_segments).cumsum(0).tolist()
    if layout.split_blocks:
        y = blockwise_gemm(scaled_gemm_reference, codes, b.weight_codes, a_scale, b.weight_scale, a_col, w_col,
                           b.bias, layout.blocks)
    else:
        segments = range(len(spec.output_segments)) if layout.per_segment_input else [None]
        outputs = [_code_segment(codes, a_scale, a_scale_neg, b, a_col, w_col, layout, bounds, s) for s in segments]
        y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
    if b.lowrank_up is None:
        return y
    return y + torch.cat([lowrank_output(rows, b, s, slice(bounds[s], bounds[s + 1]))
                          for s in range(len(spec.output_segments))], dim=-1)


def _code_segment(codes: Tensor, a_scale: Tensor, a_scale_neg: Tensor | None, b: SegLinearBuffers, a_col: Tensor,
                  w_col: Tensor, layout: GemmLayout, bounds: list[int], s: int | None) -> Tensor:
    """Output segment ``s`` with its own input (``None``: all outputs from one input) through the op's twin, unequal
    segments too (the kernel's N tiles): ``(M, n_s)`` float32 with the bias."""
    inputs, out_rows = (slice(None), slice(None)) if s is None else (slice(s, s + 1), slice(bounds[s], bounds[s + 1]))
    return scaled_gemm_reference(
        codes[inputs], b.weight_codes[out_rows], a_scale[inputs], None if a_scale_neg is None else a_scale_neg[inputs],
        b.weight_scale[out_rows], a_col, w_col, None if b.bias is None else b.bias[out_rows], None, None,
        out_rows.stop - out_rows.start if s is not None else bounds[-1], layout.scale_mode, layout.k_align,
        torch.float32)


def on_scaled_mm(layout: GemmLayout, dtype: torch.dtype) -> bool:
    """Whether an :func:`fp8_modelled` call runs on ``torch._scaled_mm`` with folded scales in the gpu backend
    (``plan.static_fp8_fits``): a plain static FP8 layer (``GemmLayout.plain_static_fp8``) with a bf16 input. Float32
    inputs take the Triton kernels there, whose epilogue applies the two scales apart (:func:`code_forward`)."""
    return dtype == torch.bfloat16 and layout.plain_static_fp8


def tensor_core_forward(rows: Tensor, b: SegLinearBuffers, spec: SegLinearSpec, layout: GemmLayout) -> Tensor:
    """An :func:`on_scaled_mm` call: ``rows`` ``(M, K)`` float32 -> ``(M, N)`` float32, the gpu backend's data flow
    (:func:`segquant.kernels.gpu.plan.static_fp8_gemm`): the same codes, their products summed by the model, times the
    folded column scales, plus the bias (float32, rounded after each step)."""
    codes, _, _ = _input_codes(rows, b, spec, layout)
    y = tensor_core_sum(codes[0], b.weight_codes, EMULATED_FP8["accumulation"]) * folded_fp8_columns(
        b.input_scale, b.weight_scale, weight_columns(b))
    return y if b.bias is None else y + b.bias.float()


def seglinear_forward(x: Tensor, b: SegLinearBuffers, spec: SegLinearSpec) -> Tensor:
    """``x`` ``(..., K)`` any float dtype -> ``(..., N)`` in ``x.dtype`` (see the module docstring).

    Without smoothing, every output segment sees the same quantized input, so it is quantized once.
    """
    rows = x.reshape(-1, spec.in_features).float()
    modelled_fp8 = fp8_modelled(b, spec, rows.shape[0])
    if modelled_fp8 or integer_exact(b, spec):
        layout = gemm_layout(spec, b)
        forward = tensor_core_forward if modelled_fp8 and on_scaled_mm(layout, x.dtype) else code_forward
        return forward(rows, b, spec, layout).to(x.dtype).reshape(*x.shape[:-1], spec.out_features)
    weight = dequantized_weight(b, spec)
    compute = int4_compute_dtype(spec, x.dtype)
    if compute is not None:
        weight = weight.to(compute).float()
    outputs, start = [], 0
    quantized_input = None
    for s, size in enumerate(spec.output_segments):
        if quantized_input is None or b.smooth is not None:
            quantized_input = quantize_input(rows, b, spec, s)
        y = quantized_input @ weight[start:start + size].T
        if b.lowrank_up is not None:
            y = y + lowrank_output(rows, b, s, slice(start, start + size))
        outputs.append(y)
        start += size
    y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
    if b.bias is not None:
        y = y + b.bias.float()
    return y.to(x.dtype).reshape(*x.shape[:-1], spec.out_features)
