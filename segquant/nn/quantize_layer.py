"""Turn one ``nn.Linear`` plus its calibration statistics into a filled ``SegLinear``.

Inputs are typed and plan-free: the layout (:class:`~segquant.nn.spec.SegLinearSpec`), the algorithm
settings (:class:`~segquant.nn.spec.LayerSettings`) and the layer's :class:`~segquant.observers.InputObserver`. The result
is the module and a :class:`LayerRecord` of what was chosen. Per output segment ``s`` (rows ``W_s``), in
the order of the method:

1. SmoothQuant: ``λ_s`` from the input's per-channel abs-max and ``W_s`` (alpha fixed or searched).
2. SVD: a rank-r branch ``U_s D_s`` of ``W_s · λ_s``, kept in 16-bit; the residual is quantized.
3. Weights: AMAX / percentile / MSE clipping with round-to-nearest, or GPTQ on the Hessian of ``x / λ_s``.
4. Static input scales per input segment ``j`` from the statistics of ``x / λ_s`` (DualScale: one per sign).

With ``spec.folded_input_segments`` step 4 comes before step 3 for those segments: ``λ_s`` and the residual
weight are multiplied by each segment's scale (so ``x / λ_s`` is already in code units, the one input scale is 1,
and step 3 rounds the weight with the scales in it); the branch of step 2 is that of the unfolded layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import Tensor, nn

from segquant.algorithms.clipping import mse_clip, percentile_clip
from segquant.algorithms.dualscale import dualscale_scales
from segquant.algorithms.gptq import gptq_quantize
from segquant.algorithms.smoothquant import alpha_grid, search_alpha, smooth_factors
from segquant.algorithms.svd import lowrank_branch
from segquant.enums import Calibrate
from segquant.errors import CalibrationError
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import LayerSettings, SegLinearSpec
from segquant.numerics import (PerTensor, asymmetric_params, block_amax, quantize_codes, scale_from_amax,
                               stored_codes, two_level_amax, two_level_split)
from segquant.observers import InputObserver

MAX_SEARCH_ROWS = 512


@dataclass(frozen=True)
class LayerRecord:
    """What the conversion of one layer chose. ``alpha``: per output segment (``None`` = not smoothed),
    only with smoothing; ``alpha_search_errors``: per segment, the output MSE of every grid alpha and of
    no smoothing; ``rank``: the low-rank branch's rank (0 = none)."""

    alpha: tuple[float | None, ...] | None = None
    alpha_search_errors: tuple[dict[str, Any], ...] = ()
    rank: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The plan's ``chosen`` entries (JSON-able), only those that apply."""
        chosen: dict[str, Any] = {}
        if self.alpha_search_errors:
            chosen["alpha_search_errors"] = list(self.alpha_search_errors)
        if self.alpha is not None:
            chosen["alpha"] = list(self.alpha)
        if self.rank:
            chosen["rank"] = self.rank
        return chosen


def column_groups(input_segments: tuple[int, ...], group_size: int | None) -> Tensor:
    """``(K,)`` int64: the weight scale column of every input column (by segment, or by group)."""
    if group_size:
        return torch.arange(sum(input_segments)) // group_size
    return torch.repeat_interleave(torch.arange(len(input_segments)), torch.tensor(input_segments))


def quantize_linear(linear: nn.Linear, spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                    device: torch.device | str) -> tuple[SegLinear, LayerRecord]:
    """A ``SegLinear`` equivalent to ``linear`` (not modified) under ``spec`` / ``settings``, and its record."""
    module = SegLinear(spec, device=device, dtype=linear.weight.dtype)
    weight = linear.weight.detach().to(device, torch.float32)
    col_group = column_groups(spec.input_segments, settings.weight_group_size).to(device)
    start, alphas, searches = 0, [], []
    for s, size in enumerate(spec.output_segments):
        rows = slice(start, start + size)
        alpha = None
        if spec.smooth:
            alpha, search = _choose_alpha(weight[rows], spec, settings, stats, col_group)
            searches += [search] if search else []
        segment = _quantize_segment(weight[rows], spec, settings, stats, col_group, alpha)
        _store_segment(module, s, rows, segment)
        alphas.append(alpha)
        start += size
    module.weight_col_group.copy_(segment.get("col_group", col_group))
    if linear.bias is not None:
        module.bias.copy_(linear.bias.detach())
    return module, LayerRecord(alpha=tuple(alphas) if spec.smooth else None, alpha_search_errors=tuple(searches),
                               rank=spec.low_rank)


def _store_segment(module: SegLinear, s: int, rows: slice, segment: dict[str, Tensor]) -> None:
    module.weight_codes[rows] = stored_codes(segment["codes"], module.spec.weight_dtype)
    if module.weight_steps is None:
        module.weight_scale[rows] = segment["scale"]
    else:
        module.weight_steps[rows], module.weight_scale[rows] = _two_level_parts(segment["scale"])
    for name in ("smooth", "input_scale", "input_scale_neg", "input_zero_point", "lowrank_down"):
        if getattr(module, name) is not None:
            getattr(module, name)[s] = segment[name]
    if module.lowrank_up is not None:
        module.lowrank_up[rows] = segment["lowrank_up"]


def _choose_alpha(weight: Tensor, spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                  col_group: Tensor) -> tuple[float | None, dict[str, Any] | None]:
    """The configured alpha, or the best on the search grid scored by this segment's output error (and
    the errors of the search).

    The search also scores "no smoothing" (``None``): on layers without outlier channels SmoothQuant
    can only move error around, and then the identity wins.
    """
    search = settings.alpha_search
    if search is None:
        return settings.alpha, None
    if stats.sample is None:
        raise CalibrationError(f"{stats.name}: alpha search needs sampled inputs; calibrate() did not keep any")
    x = stats.sample[:MAX_SEARCH_ROWS].to(weight.device)
    # GPTQ is too slow to run per candidate: candidates are scored with round-to-nearest weights.
    scoring = replace(settings, weight_method=Calibrate.AMAX) if settings.weight_method is Calibrate.GPTQ \
        else settings

    def quantized_output(alpha: float | None) -> Tensor:
        segment = _quantize_segment(weight, spec, scoring, stats, col_group, alpha)
        return _segment_module(weight, spec, segment, col_group)(x)

    best, errors = search_alpha(x, weight, alpha_grid(search.min, search.max, search.step), quantized_output)
    unsmoothed_error = float((quantized_output(None) - x @ weight.T).pow(2).mean())
    chosen = None if unsmoothed_error < min(errors) else best
    return chosen, {"grid": errors, "none": unsmoothed_error}


def _segment_module(weight: Tensor, spec: SegLinearSpec, segment: dict[str, Tensor], col_group: Tensor) -> SegLinear:
    """A one-segment ``SegLinear`` holding ``segment`` (used to score alpha candidates)."""
    spec = replace(spec, out_features=weight.shape[0], output_segments=(weight.shape[0],), has_bias=False)
    module = SegLinear(spec, device=weight.device)
    _store_segment(module, 0, slice(0, weight.shape[0]), segment)
    module.weight_col_group.copy_(segment.get("col_group", col_group))
    return module


def _quantize_segment(weight: Tensor, spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                      col_group: Tensor, alpha: float | None) -> dict[str, Tensor]:
    """All buffers of one output segment ``weight`` ``(n, K)`` float32 (see ``SegLinear``)."""
    segment: dict[str, Tensor] = {}
    smooth = torch.ones(weight.shape[1], device=weight.device)
    if alpha is not None:
        smooth = smooth_factors(stats.absmax.to(weight.device), weight, alpha)
    weight = weight * smooth
    if spec.low_rank:
        up, down = lowrank_branch(weight, spec.low_rank)
        missing = spec.low_rank - up.shape[1]  # a segment narrower than the rank: pad with zero components
        up = torch.nn.functional.pad(up, (0, missing)).to(spec.low_rank_dtype)
        down = (torch.nn.functional.pad(down, (0, 0, 0, missing)) / smooth).to(spec.low_rank_dtype)  # D / λ
        segment["lowrank_up"], segment["lowrank_down"] = up, down
        weight = weight - up.float() @ (down.float() * smooth)  # the residual of the branch as stored
    if spec.folded_input_segments:  # the branch stays that of x / λ; the quantized residual takes the scales
        scales = _folded_segment_scales(spec, settings, stats, smooth)
        smooth, weight = smooth * scales, weight * scales
    if spec.has_smooth_buffer:
        segment["smooth"] = smooth
    segment.update(_quantize_weight(weight, spec, settings, stats, col_group, smooth))
    if spec.folded_input_segments:
        segment["input_scale"] = torch.ones(1, device=weight.device)
    elif spec.input_dtype is not None and not spec.input_dynamic:
        segment.update(_static_input_scales(spec, settings, stats, smooth))
    return segment


def _folded_segment_scales(spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                           smooth: Tensor) -> Tensor:
    """``(K,)``: the static input scale of ``x / λ`` in each of ``spec.folded_input_segments``, per channel."""
    segments = spec.folded_input_segments
    unfolded = replace(spec, input_segments=segments, folded_input_segments=())
    scales = _static_input_scales(unfolded, settings, stats, smooth)["input_scale"]
    return scales.repeat_interleave(torch.tensor(segments, device=scales.device))


def _quantize_weight(weight: Tensor, spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                     col_group: Tensor, smooth: Tensor) -> dict[str, Tensor]:
    """Codes ``(n, K)`` and scales ``(n, G)`` of a (smoothed, residual) weight segment."""
    if spec.weight_dtype is None:
        return {"codes": weight, "scale": torch.ones(weight.shape[0], spec.weight_scale_columns,
                                                     device=weight.device)}
    if settings.weight_method is Calibrate.GPTQ:
        return _gptq_weight(weight, spec, settings, stats, col_group, smooth)
    amax = _weight_amax(weight, spec, settings, col_group)
    snap = _two_level_snap(weight, settings)
    scale = scale_from_amax(snap(amax) if snap else amax, spec.weight_dtype)
    return {"codes": quantize_codes(weight, scale[:, col_group], spec.weight_dtype), "scale": scale}


def _gptq_weight(weight: Tensor, spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                 col_group: Tensor, smooth: Tensor) -> dict[str, Tensor]:
    """GPTQ on the Hessian of ``x / λ`` (``H_λ = H ⊘ λλᵀ``).

    Group-wise scales come from GPTQ itself; per-tensor/per-channel scales are shared by all input
    segments (GPTQ compensates errors across segment borders), replicated over the ``G`` columns.
    """
    hessian = stats.hessian.hessian().to(weight.device) / torch.outer(smooth, smooth)
    # Output segments share one column-to-group map, so act-order groups must be static there.
    static_groups = settings.gptq_static_groups or (settings.gptq_actorder and len(spec.output_segments) > 1)
    snap = _two_level_snap(weight, settings)
    clip_fn = (lambda block, granularity: snap(block_amax(block, granularity))) if snap else None
    result = gptq_quantize(weight, hessian, spec.weight_dtype, settings.weight_granularity,
                           settings.gptq_blocksize, settings.gptq_percdamp, settings.gptq_actorder, static_groups,
                           clip_fn)
    if settings.weight_group_size:
        return {"codes": result.codes, "scale": result.scale, "col_group": result.g_idx}
    scale = result.scale.expand(weight.shape[0], spec.weight_scale_columns).contiguous()
    return {"codes": result.codes, "scale": scale, "col_group": col_group}


def _two_level_snap(weight: Tensor, settings: LayerSettings) -> Callable[[Tensor], Tensor] | None:
    """With two-level scales: clip values ``(n, G|1)`` -> raised to integer steps of each row's base
    (:func:`~segquant.numerics.two_level_amax`); else ``None``."""
    if not settings.weight_two_level:
        return None
    row_amax = weight.abs().amax(dim=1, keepdim=True)
    return lambda amax: two_level_amax(amax, row_amax)


def _two_level_parts(scale: Tensor) -> tuple[Tensor, Tensor]:
    """Snapped group scales ``(n, G)`` -> their steps ``(n, G)`` uint8 and row bases ``(n, 1)``."""
    parts = two_level_split(scale)
    if parts is None:  # the snap guarantees the form; a failure here is a bug, not bad input
        raise RuntimeError("two-level weight scales are not integer steps of one base per row")
    return parts


def _weight_amax(weight: Tensor, spec: SegLinearSpec, settings: LayerSettings, col_group: Tensor) -> Tensor:
    """Clip value per (row, scale column) ``(n, G)``; per-tensor scales share one value per column group."""
    method, granularity = settings.weight_method, settings.weight_granularity
    n, groups = weight.shape[0], spec.weight_scale_columns
    blocks = torch.zeros(n, groups, device=weight.device)
    if method is Calibrate.AMAX or isinstance(granularity, PerTensor) and groups > 1:
        blocks = blocks.scatter_reduce(1, col_group.expand(n, -1), weight.abs(), "amax", include_self=True)
        if isinstance(granularity, PerTensor):
            blocks = blocks.amax(dim=0, keepdim=True).expand(n, groups)
        return blocks.contiguous()
    if method is Calibrate.PERCENTILE:
        amax = percentile_clip(weight, settings.percentile, granularity)
    else:
        amax = mse_clip(weight, spec.weight_dtype, granularity)
    return amax.expand(n, groups).contiguous()


def _static_input_scales(spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver,
                         smooth: Tensor) -> dict[str, Tensor]:
    """Input scales ``(J,)`` of ``x / λ`` per input segment (DualScale: per sign; asymmetric: + zero point)."""
    dtype = spec.input_dtype
    lo = (stats.min.to(smooth.device) / smooth).split(list(spec.input_segments))
    hi = (stats.max.to(smooth.device) / smooth).split(list(spec.input_segments))
    lo = torch.stack([part.min() for part in lo])
    hi = torch.stack([part.max() for part in hi])
    clip = _input_clip_factor(spec, settings, stats, smooth)
    lo, hi = lo * clip, hi * clip
    if spec.dual_scale:
        scale_pos, scale_neg = dualscale_scales(lo, hi, dtype)
        return {"input_scale": scale_pos, "input_scale_neg": scale_neg}
    if not spec.input_symmetric:
        scale, zero_point = asymmetric_params(lo, hi, dtype)
        return {"input_scale": scale, "input_zero_point": zero_point}
    return {"input_scale": scale_from_amax(torch.maximum(lo.abs(), hi.abs()), dtype)}


def _input_clip_factor(spec: SegLinearSpec, settings: LayerSettings, stats: InputObserver, smooth: Tensor) -> Tensor:
    """``(J,)`` factor ≤ 1 shrinking each input segment's range (percentile / MSE calibrators), else 1."""
    method = settings.weight_method
    ones = torch.ones(len(spec.input_segments), device=smooth.device)
    if method not in (Calibrate.PERCENTILE, Calibrate.MSE) or stats.sample is None:
        return ones
    factors = []
    for part in (stats.sample.to(smooth.device) / smooth).split(list(spec.input_segments), dim=-1):
        amax = block_amax(part, PerTensor())
        if method is Calibrate.PERCENTILE:
            clipped = percentile_clip(part.abs(), settings.percentile, PerTensor())
        else:
            clipped = mse_clip(part, spec.input_dtype, PerTensor(), lo=0.05)
        factors.append((clipped / amax.clamp(min=1e-30)).clamp(max=1).reshape(()))
    return torch.stack(factors)
