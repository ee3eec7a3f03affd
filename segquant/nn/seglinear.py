"""``SegLinear``: the quantized replacement of ``nn.Linear`` (emulated forward).

``y = x Wᵀ + b`` with ``W`` ``(N, K)``. Output rows are split into output segments (e.g. the chunks of an
AdaLN modulation linear), input columns into input segments (e.g. attention heads, or the two parts of a
``cat``). For output segment ``s`` with SmoothQuant vector ``λ_s`` ``(K,)``:

    y_s = Σ_j Q(x_j / λ_s,j) · Ŵ[s, j]ᵀ  (+ (x / λ_s) · D_sᵀ · U_sᵀ  the low-rank branch)

where ``j`` runs over input segments, ``Q`` is the input quantizer (static scale per ``(s, j)`` or dynamic;
DualScale splits ``x = x⁺ + x⁻`` with one scale per sign) and ``Ŵ`` the dequantized weight (which already
contains ``λ_s`` and is the residual after the low-rank branch).

Buffers (all registered, persistent; shapes with ``S`` output segments, ``J`` input segments, ``G`` weight
scale columns, ``r`` rank):

=====================  ==================  ====================================================
name                   shape               dtype / meaning
=====================  ==================  ====================================================
``weight_codes``       (N, K)              int8 / int16 / float8 codes, or the float weight
                                           itself when weights are not quantized
``weight_scale``       (N, G)              float32 scale of each row and scale column
``weight_col_group``   (K,)                int64: scale column of every weight column
``bias``               (N,)                the original bias (only if the layer had one)
``smooth``             (S, K)              float32 SmoothQuant divisor λ_s (only with smoothing)
``input_scale``        (S, J)              float32 static input scale (DualScale: positive side)
``input_scale_neg``    (S, J)              float32 static DualScale negative-side scale
``input_zero_point``   (S, J)              float32 static asymmetric zero point
``lowrank_up``         (N, r)              16-bit low-rank branch ``U`` (rows of all segments)
``lowrank_down``       (S, r, K)           16-bit low-rank branch ``D_s``
=====================  ==================  ====================================================

The float32 buffers and the codes keep their dtype under ``module.to(dtype)``; only ``bias`` and the
low-rank branch follow it. The forward never modifies its input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segquant.nn.spec import SegLinearSpec
from segquant.numerics import (as_matrix, block_minmax, dequantize_codes, dynamic_fake_quant, expand_scale,
                               fake_quant, fake_quant_dualscale, scale_from_amax)

_KEEP_DTYPE = ("weight_codes", "weight_scale", "weight_col_group", "smooth", "input_scale", "input_scale_neg",
               "input_zero_point")


class SegLinear(nn.Module):
    """Segment-wise quantized linear layer. Build with :meth:`empty` and fill the buffers, or load a state."""

    def __init__(self, spec: SegLinearSpec, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n, k, s, j = spec.out_features, spec.in_features, len(spec.output_segments), len(spec.input_segments)
        f32 = dict(device=device, dtype=torch.float32)
        code_dtype = spec.weight_dtype.torch_dtype if spec.weight_dtype else dtype
        self.register_buffer("weight_codes", torch.zeros(n, k, device=device, dtype=code_dtype))
        self.register_buffer("weight_scale", torch.ones(n, spec.weight_scale_columns, **f32))
        self.register_buffer("weight_col_group", torch.zeros(k, device=device, dtype=torch.int64))
        self.register_buffer("bias", torch.zeros(n, device=device, dtype=dtype) if spec.has_bias else None)
        self.register_buffer("smooth", torch.ones(s, k, **f32) if spec.smooth else None)
        static = spec.input_dtype is not None and not spec.input_dynamic
        self.register_buffer("input_scale", torch.ones(s, j, **f32) if static else None)
        self.register_buffer("input_scale_neg", torch.ones(s, j, **f32) if static and spec.dual_scale else None)
        asym = static and not spec.input_symmetric and not spec.dual_scale
        self.register_buffer("input_zero_point", torch.zeros(s, j, **f32) if asym else None)
        branch = dict(device=device, dtype=spec.low_rank_dtype)
        self.register_buffer("lowrank_up", torch.zeros(n, spec.low_rank, **branch) if spec.low_rank else None)
        self.register_buffer("lowrank_down", torch.zeros(s, spec.low_rank, k, **branch) if spec.low_rank else None)

    def extra_repr(self) -> str:
        return self.spec.describe()

    def _apply(self, fn, recurse: bool = True):
        """Move buffers with ``fn`` but keep the dtype of the codes and float32 scales (see module doc)."""
        kept = {name: self._buffers[name] for name in _KEEP_DTYPE if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            moved = self._buffers[name]
            if moved.dtype != original.dtype:
                self._buffers[name] = original.to(moved.device)
        return self

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``(N, K)`` float32 (without the low-rank branch), for inspection only."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> Tensor:
        """``Ŵ`` ``(N, K)`` float32: codes times their row/column-group scale."""
        if self.spec.weight_dtype is None:
            return self.weight_codes.float()
        return dequantize_codes(self.weight_codes, self.weight_scale[:, self.weight_col_group])

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., K)`` any float dtype -> ``(..., N)`` in ``x.dtype``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SegLinear expected {self.in_features} input features, got shape {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features).float()
        weight = self.dequantized_weight()
        outputs, start = [], 0
        quantized_input = None
        for s, size in enumerate(self.spec.output_segments):
            segment_input = rows / self.smooth[s] if self.smooth is not None else rows
            if quantized_input is None or self.smooth is not None:
                quantized_input = self._quantize_input(segment_input, s)
            y = quantized_input @ weight[start:start + size].T
            if self.lowrank_up is not None:
                y = y + self._lowrank(segment_input, s, start, size)
            outputs.append(y)
            start += size
        y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _lowrank(self, segment_input: Tensor, s: int, start: int, size: int) -> Tensor:
        down = self.lowrank_down[s].float()
        return (segment_input @ down.T) @ self.lowrank_up[start:start + size].float().T

    def _quantize_input(self, rows: Tensor, s: int) -> Tensor:
        """Fake-quantize ``rows`` ``(M, K)`` float32 for output segment ``s``, input segment by segment."""
        spec = self.spec
        if spec.input_dtype is None:
            return rows
        parts = rows.split(list(spec.input_segments), dim=-1)
        return torch.cat([self._quantize_part(part, s, j) for j, part in enumerate(parts)], dim=-1)

    def _quantize_part(self, part: Tensor, s: int, j: int) -> Tensor:
        spec = self.spec
        if spec.input_dynamic:
            if spec.dual_scale:
                return _dynamic_dualscale(part, spec)
            return dynamic_fake_quant(part, spec.input_dtype, spec.input_granularity, spec.input_symmetric)
        scale = self.input_scale[s, j]
        if spec.dual_scale:
            return fake_quant_dualscale(part, scale, self.input_scale_neg[s, j], spec.input_dtype)
        zero_point = None if self.input_zero_point is None else self.input_zero_point[s, j]
        return fake_quant(part, scale, spec.input_dtype, zero_point)


def _dynamic_dualscale(part: Tensor, spec: SegLinearSpec) -> Tensor:
    """DualScale with scales computed per call: one positive and one negative scale per block."""
    m = as_matrix(part)
    lo, hi = block_minmax(m, spec.input_granularity)
    k = m.shape[-1]
    pos = expand_scale(scale_from_amax(hi.clamp(min=0), spec.input_dtype), k)
    neg = expand_scale(scale_from_amax(-lo.clamp(max=0), spec.input_dtype, negative=True), k)
    return fake_quant_dualscale(m, pos, neg, spec.input_dtype).reshape(part.shape)
