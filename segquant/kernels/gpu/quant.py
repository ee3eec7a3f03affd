"""Activation quantization for the W8A8 GEMM, in plain elementwise torch ops (any device).

Static inputs use the folded per-channel multiplier ``c_s[k] = 1 / (λ_s[k] · input_scale[s, j(k)])``
(:func:`segquant.kernels.reference.folded_multiplier`) and :func:`segquant.numerics.quantize_static` /
``quantize_static_dual``, which the emulated layer runs too: ``q = clamp(round(x · c), qmin, qmax)``
(FP8: ``clamp(x · c, ±448)`` cast to E4M3, which rounds to nearest even); DualScale quantizes each sign
with its own multiplier and concatenates the codes along K: ``[q⁺ | q⁻]`` ``(S, M, 2K)``. Dynamic inputs
compute their scales per call from the (smoothed) input, block by block, exactly like
:func:`segquant.numerics.dynamic_fake_quant`.

Every function returns codes ``(S, M, K·(1+dual))`` plus, for dynamic inputs, the scales
``(S, M|1, JA)`` (``JA`` scale columns: one per input segment, or per group) that the GEMM applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.numerics import block_amax, block_minmax, expand_scale, quantize_codes, scale_from_amax


def quantize_dynamic(rows: Tensor, smooth: Tensor | None, segments: tuple[int, ...], dtype: DType,
                     granularity, dual: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dynamic (per-call) quantization of ``rows`` ``(M, K)`` divided by the SmoothQuant vectors.

    ``smooth`` ``(S, K)`` float32 ``λ_s`` or ``None`` (S = 1). Returns codes ``(S, M, K·(1+dual))``, the
    scales ``(S, M|1, JA)`` and, with ``dual``, the negative-side scales of the same shape. Codes are
    bitwise those of the emulated forward (same divisions in the same order).
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
