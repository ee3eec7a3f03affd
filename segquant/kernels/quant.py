"""Activation quantization for the integer / FP8 GEMM, in plain elementwise torch ops (any device).

One definition for both backends: the GPU plan (:mod:`segquant.kernels.gpu.plan`) quantizes with it before
its kernels, and the emulated layer (:mod:`segquant.kernels.reference`) with it wherever it computes the
GPU's codes (static symmetric inputs always; dynamic INT8 x INT8 layers, see ``integer_exact`` there).

Static inputs use the folded per-channel multiplier ``c_s[k] = 1 / (λ_s[k] · input_scale[s, j(k)])``
(:func:`folded_multiplier`) and :func:`segquant.numerics.quantize_static` / ``quantize_static_dual``:
``q = clamp(round(x · c), qmin, qmax)`` (FP8: ``clamp(x · c, ±448)`` cast to E4M3, which rounds to nearest
even); DualScale quantizes each sign with its own multiplier and concatenates the codes along K:
``[q⁺ | q⁻]`` ``(S, M, 2K)``. Dynamic inputs compute their scales per call from the (smoothed) input, block by
block, exactly like :func:`segquant.numerics.dynamic_fake_quant`.

:func:`gemm_input` returns codes ``(Sa, M, K·(1+dual))`` plus the scales ``(Sa, M|1, JA)`` (``JA`` scale
columns: one per input segment, or per group) that the GEMM applies.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.numerics import (block_amax, block_minmax, expand_scale, quantize_codes, quantize_static,
                               quantize_static_dual, scale_from_amax)


class StaticInput(NamedTuple):
    """What a static symmetric input needs at run time: the folded multipliers ``(Sa, K)`` and the scales
    ``(Sa, 1, J)`` the GEMM applies (``*_neg``: DualScale's negative side, else ``None``)."""

    mul: Tensor
    a_scale: Tensor
    mul_neg: Tensor | None = None
    a_scale_neg: Tensor | None = None


def per_channel(input_scale: Tensor, segments: tuple[int, ...]) -> Tensor:
    """Input scales ``(S, J)``, one per input segment, repeated over each segment's channels: ``(S, K)``."""
    return input_scale.repeat_interleave(torch.tensor(segments, device=input_scale.device), dim=1)


def folded_multiplier(input_scale: Tensor, smooth: Tensor | None, segments: tuple[int, ...]) -> Tensor:
    """``(S, K)`` float32 static input multipliers ``1 / (λ_s[k] · input_scale[s, j(k)])`` from ``input_scale``
    ``(S, J)`` and ``smooth`` ``(S, K)`` (``None``: no smoothing): the one multiplication that quantizes a static
    input, in both backends."""
    scale = per_channel(input_scale, segments)
    return 1.0 / (scale if smooth is None else smooth * scale)


def folded_fp8_columns(input_scale: Tensor, weight_scale: Tensor, w_col: Tensor) -> Tensor:
    """``(N,)`` float32 ``input_scale[0, 0] · weight_scale[n, w_col[0]]``: a plain static FP8 layer's one scale per
    output channel (``GemmLayout.plain_static_fp8``), which its GEMM applies to the sum of the codes' products."""
    return (input_scale[0, 0] * weight_scale[:, int(w_col[0])]).float()


def static_input(input_scale: Tensor, input_scale_neg: Tensor | None, smooth: Tensor | None,
                 segments: tuple[int, ...], sa: int) -> StaticInput:
    """The :class:`StaticInput` of the first ``sa`` output segments from the static scales ``(S, J)`` (and
    DualScale's negative-side ones) and the SmoothQuant divisors ``(S, K)``."""
    sides = [input_scale] + ([input_scale_neg] if input_scale_neg is not None else [])
    muls = [folded_multiplier(scale[:sa], smooth, segments) for scale in sides]
    scales = [scale[:sa].unsqueeze(1).contiguous() for scale in sides]
    if input_scale_neg is None:
        return StaticInput(muls[0], scales[0])
    return StaticInput(muls[0], scales[0], muls[1], scales[1])


def gemm_input(rows: Tensor, dtype: DType, static: StaticInput | None, smooth: Tensor | None,
               segments: tuple[int, ...], granularity, dual: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``rows`` ``(M, K)`` -> codes ``(Sa, M, K·(1+dual))``, scales ``(Sa, M|1, JA)``, negative scales: static
    (``static`` given) with the folded multipliers, else dynamic on the rows divided by ``smooth``."""
    if static is None:
        return quantize_dynamic(rows, smooth, segments, dtype, granularity, dual)
    if dual:
        return quantize_static_dual(rows, static.mul, static.mul_neg, dtype), static.a_scale, static.a_scale_neg
    return quantize_static(rows, static.mul, dtype), static.a_scale, None


def quantize_dynamic(rows: Tensor, smooth: Tensor | None, segments: tuple[int, ...], dtype: DType,
                     granularity, dual: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dynamic (per-call) quantization of ``rows`` ``(M, K)`` divided by the SmoothQuant vectors.

    ``smooth`` ``(S, K)`` float32 ``λ_s`` or ``None`` (S = 1). Returns codes ``(S, M, K·(1+dual))``, the
    scales ``(S, M|1, JA)`` and, with ``dual``, the negative-side scales of the same shape. Codes are
    bitwise those of :func:`segquant.numerics.dynamic_fake_quant` (same divisions in the same order).
    """
    x = rows.float()
    smoothed = [x / lam for lam in smooth] if smooth is not None else [x]
    results = [_dynamic_one(v, segments, dtype, granularity, dual) for v in smoothed]
    codes, scale, scale_neg = zip(*results)
    return torch.stack(codes), torch.stack(scale), torch.stack(scale_neg) if dual else None


def _dynamic_one(v: Tensor, segments, dtype: DType, granularity, dual: bool):
    """One output segment's input ``v`` ``(M, K)`` float32 -> (codes, scales (M|1, JA), neg scales)."""
    parts = v.split(list(segments), dim=-1)
    if not dual:
        scales = [scale_from_amax(block_amax(p, granularity), dtype) for p in parts]
        codes = [quantize_codes(p, expand_scale(s, p.shape[-1]), dtype) for p, s in zip(parts, scales)]
        return torch.cat(codes, -1), torch.cat(scales, -1), None
    pos_s, neg_s, pos_q, neg_q = [], [], [], []
    for p in parts:
        lo, hi = block_minmax(p, granularity)
        pos_s.append(scale_from_amax(hi.clamp(min=0), dtype))
        neg_s.append(scale_from_amax(-lo.clamp(max=0), dtype, negative=True))
        pos_q.append(quantize_codes(p.clamp(min=0), expand_scale(pos_s[-1], p.shape[-1]), dtype))
        neg_q.append(quantize_codes(p.clamp(max=0), expand_scale(neg_s[-1], p.shape[-1]), dtype))
    return torch.cat(pos_q + neg_q, -1), torch.cat(pos_s, -1), torch.cat(neg_s, -1)
