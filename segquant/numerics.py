"""Quantization numerics: granularities, scales, and quantize / dequantize / fake-quantize.

Every tensor is viewed as a 2-D matrix ``(rows, K)`` whose last dim ``K`` is the feature dim
(activations: ``rows`` = tokens; weights ``(N, K)``: ``rows`` = output channels). A granularity is
a block shape on that matrix; one scale per block:

=============  ==============  ==================================
granularity    block shape     scale shape
=============  ==============  ==================================
PerTensor      (rows, K)       ``(1, 1)``
PerChannel     (1, K)          ``(rows, 1)`` (weights: per output channel)
PerToken       (1, K)          ``(rows, 1)`` (activations: per token)
PerGroup(g)    (1, g)          ``(rows, K // g)``
=============  ==============  ==================================

Symmetric integer fake-quant: ``q = clamp(round(v / s), qmin, qmax)``, ``v̂ = s · q`` with round half to
even (``torch.round``). Asymmetric integers add a zero point ``z``: ``q = clamp(round(v / s) + z, qmin,
qmax)``, ``v̂ = s · (q − z)``. FP8 casts ``v / s`` to the float8 dtype after saturating to the format's
max. FP16/BF16 are a plain cast. All scale arithmetic is float32; outputs keep the input's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.errors import CalibrationError, ConfigError


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor."""

    name = "tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per row of a ``(N, K)`` weight (per output channel)."""

    name = "channel"


@dataclass(frozen=True)
class PerToken:
    """One scale per token (row) of an activation ``(..., K)``; dynamic only."""

    name = "token"


@dataclass(frozen=True)
class PerGroup:
    """One scale per ``group_size`` consecutive features of each row."""

    group_size: int
    name = "group"

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size <= 0:
            raise ConfigError(f"group_size: {self.group_size!r} must be a positive integer")


Granularity = PerTensor | PerChannel | PerToken | PerGroup


def as_matrix(x: Tensor) -> Tensor:
    """View ``x`` of shape ``(..., K)`` as ``(rows, K)``; a 0-D/1-D tensor becomes one row."""
    return x.reshape(1, -1) if x.dim() <= 1 else x.reshape(-1, x.shape[-1])


def block_amax(x: Tensor, granularity: Granularity) -> Tensor:
    """Max of ``|x|`` per block. ``x``: ``(..., K)`` any float dtype -> float32 scale-shaped tensor."""
    m = as_matrix(x).float().abs()
    if isinstance(granularity, PerTensor):
        return m.amax().reshape(1, 1)
    if isinstance(granularity, (PerChannel, PerToken)):
        return m.amax(dim=1, keepdim=True)
    return _grouped(m, granularity.group_size).amax(dim=-1)


def block_minmax(x: Tensor, granularity: Granularity) -> tuple[Tensor, Tensor]:
    """Signed (min, max) per block, each float32 and scale-shaped (see :func:`block_amax`)."""
    m = as_matrix(x).float()
    if isinstance(granularity, PerTensor):
        return m.amin().reshape(1, 1), m.amax().reshape(1, 1)
    if isinstance(granularity, (PerChannel, PerToken)):
        return m.amin(dim=1, keepdim=True), m.amax(dim=1, keepdim=True)
    g = _grouped(m, granularity.group_size)
    return g.amin(dim=-1), g.amax(dim=-1)


def _grouped(m: Tensor, group_size: int) -> Tensor:
    rows, k = m.shape
    if k % group_size:
        raise ConfigError(f"group_size: {group_size} does not divide the feature dim {k}")
    return m.reshape(rows, k // group_size, group_size)


def expand_scale(scale: Tensor, k: int) -> Tensor:
    """Broadcast a ``(rows|1, G)`` block scale to ``(rows|1, K)`` by repeating each group column."""
    groups = scale.shape[-1]
    if groups == 1 or groups == k:
        return scale
    if k % groups:
        raise ConfigError(f"scale has {groups} groups, which does not divide the feature dim {k}")
    return scale.repeat_interleave(k // groups, dim=-1)


def scale_from_amax(amax: Tensor, dtype: DType, negative: bool = False) -> Tensor:
    """Symmetric scale ``amax / qmax`` (float32); blocks whose amax is 0 get scale 1.

    With ``negative=True`` the scale maps ``-amax`` to ``qmin`` (DualScale's negative side, which
    uses the full negative code range, e.g. −128 for INT8).
    """
    if dtype.is_passthrough:
        return torch.ones_like(amax, dtype=torch.float32)
    limit = -dtype.qmin if negative else dtype.qmax
    amax = amax.float()
    return torch.where(amax > 0, amax / limit, torch.ones_like(amax))


TWO_LEVEL_STEPS = 16
"""Largest integer multiple of a row's base scale that a two-level group scale may be: INT4 codes times it
stay within INT8 (``16 · [-8, 7] = [-128, 112]``)."""


def two_level_amax(amax: Tensor, row_amax: Tensor) -> Tensor:
    """Group clip values ``amax`` ``(N, G)`` raised to integer multiples ``m ∈ [1, 16]`` of one base per row,
    ``row_amax / 16`` (``row_amax`` ``(N, 1)``: the row's largest magnitude; QServe's progressive group
    quantization). Rounding up never clips more than ``amax`` does, except where a group exceeds
    ``row_amax`` (then ``m = 16``)."""
    base = row_amax.float() / TWO_LEVEL_STEPS
    steps = torch.where(base > 0, torch.ceil(amax.float() / base.clamp(min=1e-30)), torch.ones_like(amax.float()))
    return base * steps.clamp(1, TWO_LEVEL_STEPS)


def two_level_split(scale: Tensor, tolerance: float = 1e-3) -> tuple[Tensor, Tensor] | None:
    """``(multiplier, base)`` with ``scale ≈ base · multiplier`` where every row of ``scale`` ``(N, G)`` is a set
    of integer multiples (1..16) of one base: multiplier ``(N, G)`` uint8, base ``(N, 1)`` float32 (the
    smallest base that works per row); ``None`` when some row is not."""
    scale = scale.float()
    top = scale.amax(dim=1, keepdim=True)
    candidates = torch.arange(1, TWO_LEVEL_STEPS + 1, device=scale.device, dtype=torch.float32)
    ratios = scale.unsqueeze(0) * candidates.view(-1, 1, 1) / top.unsqueeze(0)  # (16, N, G): scale / (top / m)
    steps = ratios.round()
    fits = (((ratios - steps).abs() <= tolerance) & (steps >= 1)).all(dim=2)  # (16, N)
    if not bool(fits.any(dim=0).all()):
        return None
    best = TWO_LEVEL_STEPS - 1 - fits.flip(0).float().argmax(dim=0)  # index of the largest fitting m per row
    rows = torch.arange(scale.shape[0], device=scale.device)
    return steps[best, rows].to(torch.uint8), (top[:, 0] / candidates[best]).unsqueeze(1)


def asymmetric_params(xmin: Tensor, xmax: Tensor, dtype: DType) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point (both float32) of an asymmetric integer quantizer.

    The range is widened to contain 0 so that zero is exactly representable.
    """
    if not dtype.is_int:
        raise ConfigError(f"symmetric: False is only possible for integer types, not {dtype.value!r}")
    lo = torch.minimum(xmin.float(), torch.zeros_like(xmin, dtype=torch.float32))
    hi = torch.maximum(xmax.float(), torch.zeros_like(xmax, dtype=torch.float32))
    span = hi - lo
    scale = torch.where(span > 0, span / (dtype.qmax - dtype.qmin), torch.ones_like(span))
    zero_point = (dtype.qmin - torch.round(lo / scale)).clamp(dtype.qmin, dtype.qmax)
    return scale, zero_point


def quantize_codes(x: Tensor, scale: Tensor, dtype: DType, zero_point: Tensor | None = None) -> Tensor:
    """Quantize ``x`` ``(..., K)`` to codes of ``dtype.torch_dtype`` (int8/int16/float8).

    ``scale`` (and ``zero_point``) must broadcast against ``x``. Never modifies ``x``.
    """
    v = x.float() / scale
    if dtype.is_fp8:
        return v.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)
    if dtype.is_passthrough:
        return x.to(dtype.torch_dtype)
    q = torch.round(v)
    if zero_point is not None:
        q = q + zero_point
    return q.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)


def dequantize_codes(codes: Tensor, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """Inverse of :func:`quantize_codes`: float32 ``scale · (codes − zero_point)``."""
    q = codes.float()
    if zero_point is not None:
        q = q - zero_point
    return q * scale


def to_codes(v: Tensor, dtype: DType) -> Tensor:
    """Scaled float32 values -> codes of ``dtype`` (round half-to-even and clamp; FP8 saturates to ±qmax,
    then the cast rounds to nearest even). Out of place: the form that measured fastest compiled (notes)."""
    if not dtype.is_fp8:
        v = v.round()
    return v.clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)


def quantize_static(rows: Tensor, mul: Tensor, dtype: DType) -> Tensor:
    """``rows`` ``(M, K)`` float, ``mul`` ``(S, K)`` float32 -> codes ``(S, M, K)`` (the product is float32)."""
    return to_codes(rows.unsqueeze(0) * mul.unsqueeze(1), dtype)


def quantize_static_dual(rows: Tensor, mul_pos: Tensor, mul_neg: Tensor, dtype: DType) -> Tensor:
    """DualScale: codes ``[q⁺ | q⁻]`` ``(S, M, 2K)``, ``q⁺ ∈ [0, qmax]`` and ``q⁻ ∈ [qmin, 0]``."""
    x = rows.unsqueeze(0)
    pos = to_codes(x.clamp(min=0) * mul_pos.unsqueeze(1), dtype)
    neg = to_codes(x.clamp(max=0) * mul_neg.unsqueeze(1), dtype)
    return torch.cat([pos, neg], dim=-1)


def fake_quant(x: Tensor, scale: Tensor, dtype: DType, zero_point: Tensor | None = None) -> Tensor:
    """Quantize-dequantize ``x`` ``(..., K)`` with a broadcastable ``scale``; returns ``x.dtype``."""
    if dtype.is_passthrough:
        return x.to(dtype.torch_dtype).to(x.dtype)
    return dequantize_codes(quantize_codes(x, scale, dtype, zero_point), scale, zero_point).to(x.dtype)


def dynamic_fake_quant(x: Tensor, dtype: DType, granularity: Granularity, symmetric: bool = True) -> Tensor:
    """Fake-quantize ``x`` ``(..., K)`` with scales computed from ``x`` itself (dynamic quantization)."""
    if dtype.is_passthrough:
        return fake_quant(x, torch.ones(()), dtype)
    m = as_matrix(x)
    k = m.shape[-1]
    if symmetric:
        scale, zero_point = scale_from_amax(block_amax(m, granularity), dtype), None
    else:
        scale, zero_point = asymmetric_params(*block_minmax(m, granularity), dtype)
        zero_point = expand_scale(zero_point, k)
    return fake_quant(m, expand_scale(scale, k), dtype, zero_point).reshape(x.shape)


def check_finite(x: Tensor, what: str) -> None:
    """Raise :class:`CalibrationError` naming ``what`` if ``x`` holds NaN or ±inf."""
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = "NaN" if torch.isnan(x).any() else "inf"
        raise CalibrationError(f"{what}: calibration data contains {bad}; clean the data or the model first")


def pack_int4(codes: Tensor) -> Tensor:
    """Pack int4 codes ``(..., K)`` (any integer dtype, values in ``[-8, 7]``) into uint8 ``(..., ⌈K/2⌉)``.

    Layout (the saved format of 4-bit weights): byte ``i`` of a row holds code ``2i`` in its low nibble
    and code ``2i + 1`` in its high nibble, each as a 4-bit two's complement; an odd ``K`` leaves the
    last high nibble 0.
    """
    nibbles = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    if nibbles.shape[-1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: Tensor, k: int) -> Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``(..., ⌈K/2⌉)`` -> int8 codes ``(..., K)`` in ``[-8, 7]``."""
    if packed.dtype != torch.uint8 or packed.shape[-1] != (k + 1) // 2:
        raise ValueError(f"unpack_int4: expected uint8 (..., {(k + 1) // 2}) for K={k}, got "
                         f"{packed.dtype} {tuple(packed.shape)}")
    nibbles = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)[..., :k].to(torch.int8)
    return nibbles - ((nibbles >> 3) << 4)  # sign-extend: 8..15 -> -8..-1


def stored_codes(codes: Tensor, dtype: DType) -> Tensor:
    """Weight codes ``(N, K)`` as the canonical ``weight_codes`` buffer stores them (int4: packed)."""
    return pack_int4(codes) if dtype is DType.INT4 else codes


def codes_of_storage(stored: Tensor, dtype: DType, k: int) -> Tensor:
    """Inverse of :func:`stored_codes`: the codes ``(N, K)`` of the ``weight_codes`` buffer."""
    return unpack_int4(stored, k) if dtype is DType.INT4 else stored
