"""A frozen copy of ``SegLinear.forward`` and the numerics it used, taken before the kernel seam
(commit b1314ac, ``segquant/nn/seglinear.py`` and ``segquant/numerics.py``).

It is the oracle of ``test_reference.py``: the reference functions of ``segquant.kernels`` must give
bitwise the same outputs on CPU. It imports nothing from segquant but the ``DType`` enum and the
granularity classes (plain data), so later edits of the library cannot change what it computes.
Do not edit it to make a test pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.numerics import PerChannel, PerTensor, PerToken, codes_of_storage


def _as_matrix(x: Tensor) -> Tensor:
    return x.reshape(1, -1) if x.dim() <= 1 else x.reshape(-1, x.shape[-1])


def _grouped(m: Tensor, group_size: int) -> Tensor:
    rows, k = m.shape
    return m.reshape(rows, k // group_size, group_size)


def _block_amax(x: Tensor, granularity) -> Tensor:
    m = _as_matrix(x).float().abs()
    if isinstance(granularity, PerTensor):
        return m.amax().reshape(1, 1)
    if isinstance(granularity, (PerChannel, PerToken)):
        return m.amax(dim=1, keepdim=True)
    return _grouped(m, granularity.group_size).amax(dim=-1)


def _block_minmax(x: Tensor, granularity) -> tuple[Tensor, Tensor]:
    m = _as_matrix(x).float()
    if isinstance(granularity, PerTensor):
        return m.amin().reshape(1, 1), m.amax().reshape(1, 1)
    if isinstance(granularity, (PerChannel, PerToken)):
        return m.amin(dim=1, keepdim=True), m.amax(dim=1, keepdim=True)
    g = _grouped(m, granularity.group_size)
    return g.amin(dim=-1), g.amax(dim=-1)


def _expand_scale(scale: Tensor, k: int) -> Tensor:
    groups = scale.shape[-1]
    if groups == 1 or groups == k:
        return scale
    return scale.repeat_interleave(k // groups, dim=-1)


def _scale_from_amax(amax: Tensor, dtype: DType, negative: bool = False) -> Tensor:
    if dtype.is_passthrough:
        return torch.ones_like(amax, dtype=torch.float32)
    limit = -dtype.qmin if negative else dtype.qmax
    amax = amax.float()
    return torch.where(amax > 0, amax / limit, torch.ones_like(amax))


def _asymmetric_params(xmin: Tensor, xmax: Tensor, dtype: DType) -> tuple[Tensor, Tensor]:
    lo = torch.minimum(xmin.float(), torch.zeros_like(xmin, dtype=torch.float32))
    hi = torch.maximum(xmax.float(), torch.zeros_like(xmax, dtype=torch.float32))
    span = hi - lo
    scale = torch.where(span > 0, span / (dtype.qmax - dtype.qmin), torch.ones_like(span))
    zero_point = (dtype.qmin - torch.round(lo / scale)).clamp(dtype.qmin, dtype.qmax)
    return scale, zero_point


def _quantize_codes(x: Tensor, scale: Tensor, dtype: DType, zero_point: Tensor | None = None) -> Tensor:
    v = x.float() / scale
    if dtype.is_fp8:
        return v.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)
    if dtype.is_passthrough:
        return x.to(dtype.torch_dtype)
    q = torch.round(v)
    if zero_point is not None:
        q = q + zero_point
    return q.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)


def _dequantize_codes(codes: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    q = codes.float()
    if zero_point is not None:
        q = q - zero_point
    return q * scale


def _fake_quant(x: Tensor, scale: Tensor, dtype: DType, zero_point: Tensor | None = None) -> Tensor:
    if dtype.is_passthrough:
        return x.to(dtype.torch_dtype).to(x.dtype)
    return _dequantize_codes(_quantize_codes(x, scale, dtype, zero_point), scale, zero_point).to(x.dtype)


def _fake_quant_dualscale(x: Tensor, scale_pos: Tensor, scale_neg: Tensor, dtype: DType) -> Tensor:
    xf = x.float()
    pos = _quantize_codes(xf.clamp(min=0), scale_pos, dtype).float().clamp(min=0)
    neg = _quantize_codes(xf.clamp(max=0), scale_neg, dtype).float().clamp(max=0)
    return (pos * scale_pos + neg * scale_neg).to(x.dtype)


def _dynamic_fake_quant(x: Tensor, dtype: DType, granularity, symmetric: bool = True) -> Tensor:
    if dtype.is_passthrough:
        return _fake_quant(x, torch.ones(()), dtype)
    m = _as_matrix(x)
    k = m.shape[-1]
    if symmetric:
        scale, zero_point = _scale_from_amax(_block_amax(m, granularity), dtype), None
    else:
        scale, zero_point = _asymmetric_params(*_block_minmax(m, granularity), dtype)
        zero_point = _expand_scale(zero_point, k)
    return _fake_quant(m, _expand_scale(scale, k), dtype, zero_point).reshape(x.shape)


def _dynamic_dualscale(part: Tensor, spec) -> Tensor:
    m = _as_matrix(part)
    lo, hi = _block_minmax(m, spec.input_granularity)
    k = m.shape[-1]
    pos = _expand_scale(_scale_from_amax(hi.clamp(min=0), spec.input_dtype), k)
    neg = _expand_scale(_scale_from_amax(-lo.clamp(max=0), spec.input_dtype, negative=True), k)
    return _fake_quant_dualscale(m, pos, neg, spec.input_dtype).reshape(part.shape)


def _quantize_part(b, spec, part: Tensor, s: int, j: int) -> Tensor:
    if spec.input_dynamic:
        if spec.dual_scale:
            return _dynamic_dualscale(part, spec)
        return _dynamic_fake_quant(part, spec.input_dtype, spec.input_granularity, spec.input_symmetric)
    scale = b["input_scale"][s, j]
    if spec.dual_scale:
        return _fake_quant_dualscale(part, scale, b["input_scale_neg"][s, j], spec.input_dtype)
    zero_point = None if b["input_zero_point"] is None else b["input_zero_point"][s, j]
    return _fake_quant(part, scale, spec.input_dtype, zero_point)


def _codes(v: Tensor, dtype: DType) -> Tensor:
    """Round (integers) and saturate; FP8 through its storage dtype."""
    if dtype.is_fp8:
        return v.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype).float()
    return torch.round(v).clamp(dtype.qmin, dtype.qmax)


def _static_folded(b, spec, x: Tensor, s: int) -> Tensor:
    """Static symmetric inputs as the GPU quantizes them: ``round(x · 1/(λ·scale))·scale`` per input segment
    (DualScale: per sign), on the unsmoothed ``x``."""
    lam = b["smooth"][s] if b["smooth"] is not None else torch.ones(x.shape[-1])
    out, c0 = [], 0
    for j, k_j in enumerate(spec.input_segments):
        part, l, scale = x[:, c0:c0 + k_j], lam[c0:c0 + k_j], b["input_scale"][s, j]
        if spec.dual_scale:
            neg_scale = b["input_scale_neg"][s, j]
            out.append(_codes(part.clamp(min=0) * (1.0 / (l * scale)), spec.input_dtype) * scale
                       + _codes(part.clamp(max=0) * (1.0 / (l * neg_scale)), spec.input_dtype) * neg_scale)
        else:
            out.append(_codes(part * (1.0 / (l * scale)), spec.input_dtype) * scale)
        c0 += k_j
    return torch.cat(out, dim=-1)


def _quantize_input(b, spec, rows: Tensor, s: int) -> Tensor:
    if spec.input_dtype is None:
        return rows
    parts = rows.split(list(spec.input_segments), dim=-1)
    return torch.cat([_quantize_part(b, spec, part, s, j) for j, part in enumerate(parts)], dim=-1)


def legacy_forward(b: dict, spec, x: Tensor) -> Tensor:
    """The old ``SegLinear.forward``; ``b`` maps every canonical buffer name to its tensor (or None)."""
    in_features, out_features = spec.in_features, spec.out_features
    rows = x.reshape(-1, in_features).float()
    if spec.weight_dtype is None:
        weight = b["weight_codes"].float()
    else:
        codes = codes_of_storage(b["weight_codes"], spec.weight_dtype, in_features)  # int4 is now packed
        weight = _dequantize_codes(codes, b["weight_scale"][:, b["weight_col_group"]])
    outputs, start = [], 0
    quantized_input = None
    smooth, up, down = b["smooth"], b["lowrank_up"], b["lowrank_down"]
    for s, size in enumerate(spec.output_segments):
        segment_input = rows / smooth[s] if smooth is not None else rows
        if quantized_input is None or smooth is not None:
            static_symmetric = spec.input_dtype is not None and not spec.input_dynamic and b["input_zero_point"] is None
            quantized_input = (_static_folded(b, spec, rows, s) if static_symmetric
                               else _quantize_input(b, spec, segment_input, s))
        y = quantized_input @ weight[start:start + size].T
        if up is not None:
            t = (rows.to(down.dtype).float() @ down[s].float().T).to(down.dtype)  # D_s holds 1/λ_s; t in 16 bits
            y = y + t.float() @ up[start:start + size].float().T
        outputs.append(y)
        start += size
    y = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
    if b["bias"] is not None:
        y = y + b["bias"].float()
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)
