"""DualScale (SegQuant): polarity-aware quantization of activation outputs. Everything DualScale is here.

The outputs of SiLU/GELU/Mish (and of gated units such as GEGLU/SwiGLU) have a narrow negative side
(SiLU ≥ −0.279, GELU ≥ −0.17) that carries detail; one scale for both signs crushes it. DualScale
splits ``x = x⁺ + x⁻`` and quantizes each side with its own scale: ``q⁺ ∈ [0, qmax]`` with
``s⁺ = max(x⁺) / qmax`` and ``q⁻ ∈ [qmin, 0]`` with ``s⁻ = −min(x⁻) / −qmin`` (the full negative code
range, e.g. −128 for INT8), so ``x̂ = s⁺ q⁺ + s⁻ q⁻``.

* :data:`ACTIVATION_OPS` / :data:`GATED_KINDS` / :data:`ACTIVATION_KINDS`: which activations get it
  (the graph matcher reports one of :data:`ACTIVATION_KINDS`).
* :func:`uses_dualscale`: the per-layer decision (the plan).
* :func:`dualscale_scales`: the scale pair from a signed (min, max) — static scales at conversion,
  dynamic scales per call.
* :func:`fake_quant_dualscale` / :func:`dynamic_fake_quant_dualscale`: the split fake-quant.
"""

from __future__ import annotations

from torch import Tensor

from segquant.enums import DType
from segquant.numerics import Granularity, as_matrix, block_minmax, expand_scale, quantize_codes, scale_from_amax

ACTIVATION_OPS = {"silu": "silu", "mish": "mish"}
"""ATen op name -> activation kind, for the activations recognised by their op alone (GELU is told apart
by its ``approximate`` argument: ``"gelu"`` / ``"gelu_tanh"``)."""

GATED_KINDS = {"gelu": "geglu", "gelu_tanh": "geglu_tanh", "silu": "swiglu"}
"""Activation kind -> name of the gated unit ``act(a) * b`` built on it (others: ``"<kind>_gated"``)."""

ACTIVATION_KINDS = ("silu", "gelu", "gelu_tanh", "mish", *GATED_KINDS.values())
"""Every activation kind the graph reports as ``dual_scale_activation``."""


def uses_dualscale(activation: str | None, input_quantized: bool) -> bool:
    """A layer gets DualScale when the graph found an activation feeding it and its input is quantized."""
    return activation is not None and input_quantized


def dualscale_scales(lo: Tensor, hi: Tensor, dtype: DType) -> tuple[Tensor, Tensor]:
    """``(s⁺, s⁻)`` float32, same shape as ``lo`` / ``hi`` (signed minimum and maximum of each block).

    A side that never occurs (``hi ≤ 0`` or ``lo ≥ 0``) gets scale 1.
    """
    return (scale_from_amax(hi.clamp(min=0), dtype),
            scale_from_amax(-lo.clamp(max=0), dtype, negative=True))


def fake_quant_dualscale(x: Tensor, scale_pos: Tensor, scale_neg: Tensor, dtype: DType) -> Tensor:
    """DualScale fake-quant: ``x = x⁺ + x⁻``, each side with its own scale.

    Integers: ``q⁺ ∈ [0, qmax]`` and ``q⁻ ∈ [qmin, 0]``; FP8 saturates each side to the format's max.
    ``scale_pos`` / ``scale_neg`` broadcast against ``x`` ``(..., K)``. Returns ``x.dtype``.
    """
    xf = x.float()
    pos = quantize_codes(xf.clamp(min=0), scale_pos, dtype).float().clamp(min=0)
    neg = quantize_codes(xf.clamp(max=0), scale_neg, dtype).float().clamp(max=0)
    return (pos * scale_pos + neg * scale_neg).to(x.dtype)


def dynamic_fake_quant_dualscale(x: Tensor, dtype: DType, granularity: Granularity) -> Tensor:
    """DualScale with the scale pair computed from ``x`` ``(..., K)`` itself, one pair per block."""
    m = as_matrix(x)
    pos, neg = dualscale_scales(*block_minmax(m, granularity), dtype)
    k = m.shape[-1]
    return fake_quant_dualscale(m, expand_scale(pos, k), expand_scale(neg, k), dtype).reshape(x.shape)
