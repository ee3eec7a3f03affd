"""Turn one ``nn.Linear`` plus its calibration statistics into a filled ``SegLinear``.

Per output segment ``s`` (rows ``W_s``), in the order of the method:

1. SmoothQuant: ``λ_s`` from the input's per-channel abs-max and ``W_s`` (alpha fixed or searched).
2. SVD: a rank-r branch ``U_s D_s`` of ``W_s · λ_s``, kept in 16-bit; the residual is quantized.
3. Weights: AMAX / percentile / MSE clipping with round-to-nearest, or GPTQ on the Hessian of ``x / λ_s``.
4. Static input scales per input segment ``j`` from the statistics of ``x / λ_s`` (DualScale: one per sign).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from segquant.algorithms.clipping import mse_clip, percentile_clip
from segquant.algorithms.gptq import gptq_quantize
from segquant.algorithms.smoothquant import alpha_grid, search_alpha, smooth_factors
from segquant.algorithms.svd import lowrank_branch
from segquant.enums import Calibrate
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import (PerTensor, asymmetric_params, block_amax, quantize_codes,
                               scale_from_amax)
from segquant.observers import InputObserver
from segquant.plan import LayerPlan

MAX_SEARCH_ROWS = 512


def column_groups(input_segments: tuple[int, ...], group_size: int | None) -> Tensor:
    """``(K,)`` int64: the weight scale column of every input column (by segment, or by group)."""
    if group_size:
        return torch.arange(sum(input_segments)) // group_size
    return torch.repeat_interleave(torch.arange(len(input_segments)), torch.tensor(input_segments))


def quantize_linear(linear: nn.Linear, layer: LayerPlan, stats: InputObserver,
                    device: torch.device | str) -> SegLinear:
    """A ``SegLinear`` equivalent to ``linear`` under ``layer``'s plan; ``linear`` is not modified.

    Records what was chosen (alpha per segment, rank) in ``layer.chosen``.
    """
    spec = layer.spec()
    module = SegLinear(spec, device=device, dtype=linear.weight.dtype)
    weight = linear.weight.detach().to(device, torch.float32)
    col_group = column_groups(spec.input_segments, layer.weight_group_size()).to(device)
    start, alphas = 0, []
    for s, size in enumerate(spec.output_segments):
        rows = slice(start, start + size)
        alpha = _choose_alpha(weight[rows], layer, stats, col_group) if spec.smooth else None
        segment = _quantize_segment(weight[rows], layer, stats, col_group, alpha)
        _store_segment(module, s, rows, segment)
        alphas.append(alpha)
        start += size
    module.weight_col_group.copy_(segment.get("col_group", col_group))
    if linear.bias is not None:
        module.bias.copy_(linear.bias.detach())
    if spec.smooth:
        layer.chosen["alpha"] = alphas
    if spec.low_rank:
        layer.chosen["rank"] = spec.low_rank
    return module


def _store_segment(module: SegLinear, s: int, rows: slice, segment: dict[str, Tensor]) -> None:
    module.weight_codes[rows] = segment["codes"]
    module.weight_scale[rows] = segment["scale"]
    for name in ("smooth", "input_scale", "input_scale_neg", "input_zero_point", "lowrank_down"):
        if getattr(module, name) is not None:
            getattr(module, name)[s] = segment[name]
    if module.lowrank_up is not None:
        module.lowrank_up[rows] = segment["lowrank_up"]


def _choose_alpha(weight: Tensor, layer: LayerPlan, stats: InputObserver, col_group: Tensor) -> float | None:
    """The configured alpha, or the best on the search grid scored by this segment's output error.

    The search also scores "no smoothing" (``None``): on layers without outlier channels SmoothQuant
    can only move error around, and then the identity wins.
    """
    search = layer.config.opt.search_alpha
    if not search.enable:
        return layer.config.opt.alpha
    if stats.sample is None:
        raise RuntimeError(f"{layer.name}: alpha search needs sampled inputs; calibrate() did not keep any")
    x = stats.sample[:MAX_SEARCH_ROWS].to(weight.device)
    # GPTQ is too slow to run per candidate: candidates are scored with round-to-nearest weights.
    scoring = _with_weight_method(layer, Calibrate.AMAX)

    def quantized_output(alpha: float | None) -> Tensor:
        segment = _quantize_segment(weight, scoring, stats, col_group, alpha)
        return _segment_module(weight, scoring, segment, col_group)(x)

    best, errors = search_alpha(x, weight, alpha_grid(search.min, search.max, search.step), quantized_output)
    unsmoothed_error = float((quantized_output(None) - x @ weight.T).pow(2).mean())
    layer.chosen.setdefault("alpha_search_errors", []).append({"grid": errors, "none": unsmoothed_error})
    return None if unsmoothed_error < min(errors) else best


def _with_weight_method(layer: LayerPlan, method: Calibrate) -> LayerPlan:
    if layer.config.calib.type is not Calibrate.GPTQ:
        return layer
    calib = replace(layer.config.calib, type=method)
    return replace(layer, config=replace(layer.config, calib=calib), chosen={})


def _segment_module(weight: Tensor, layer: LayerPlan, segment: dict[str, Tensor], col_group: Tensor) -> SegLinear:
    """A one-segment ``SegLinear`` holding ``segment`` (used to score alpha candidates)."""
    spec = replace(layer.spec(), out_features=weight.shape[0], output_segments=(weight.shape[0],),
                   has_bias=False)
    module = SegLinear(spec, device=weight.device)
    _store_segment(module, 0, slice(0, weight.shape[0]), segment)
    module.weight_col_group.copy_(segment.get("col_group", col_group))
    return module


def _quantize_segment(weight: Tensor, layer: LayerPlan, stats: InputObserver, col_group: Tensor,
                      alpha: float | None) -> dict[str, Tensor]:
    """All buffers of one output segment ``weight`` ``(n, K)`` float32 (see ``SegLinear``)."""
    spec = layer.spec()
    segment: dict[str, Tensor] = {}
    smooth = torch.ones(weight.shape[1], device=weight.device)
    if alpha is not None:
        smooth = smooth_factors(stats.absmax.to(weight.device), weight, alpha)
    if spec.smooth:
        segment["smooth"] = smooth
    weight = weight * smooth
    if spec.low_rank:
        up, down = lowrank_branch(weight, spec.low_rank)
        missing = spec.low_rank - up.shape[1]  # a segment narrower than the rank: pad with zero components
        up = torch.nn.functional.pad(up, (0, missing)).to(spec.low_rank_dtype)
        down = torch.nn.functional.pad(down, (0, 0, 0, missing)).to(spec.low_rank_dtype)
        segment["lowrank_up"], segment["lowrank_down"] = up, down
        weight = weight - up.float() @ down.float()
    segment.update(_quantize_weight(weight, layer, spec, stats, col_group, smooth))
    if spec.input_dtype is not None and not spec.input_dynamic:
        segment.update(_static_input_scales(layer, spec, stats, smooth))
    return segment


def _quantize_weight(weight: Tensor, layer: LayerPlan, spec: SegLinearSpec, stats: InputObserver,
                     col_group: Tensor, smooth: Tensor) -> dict[str, Tensor]:
    """Codes ``(n, K)`` and scales ``(n, G)`` of a (smoothed, residual) weight segment."""
    if spec.weight_dtype is None:
        return {"codes": weight, "scale": torch.ones(weight.shape[0], spec.weight_scale_columns,
                                                     device=weight.device)}
    calib, dtype = layer.config.calib, spec.weight_dtype
    if calib.type is Calibrate.GPTQ:
        return _gptq_weight(weight, layer, spec, stats, col_group, smooth)
    amax = _weight_amax(weight, layer, col_group, spec.weight_scale_columns)
    scale = scale_from_amax(amax, dtype)
    return {"codes": quantize_codes(weight, scale[:, col_group], dtype), "scale": scale}


def _gptq_weight(weight: Tensor, layer: LayerPlan, spec: SegLinearSpec, stats: InputObserver,
                 col_group: Tensor, smooth: Tensor) -> dict[str, Tensor]:
    """GPTQ on the Hessian of ``x / λ`` (``H_λ = H ⊘ λλᵀ``).

    Group-wise scales come from GPTQ itself; per-tensor/per-channel scales are shared by all input
    segments (GPTQ compensates errors across segment borders), replicated over the ``G`` columns.
    """
    calib = layer.config.calib
    hessian = stats.hessian.hessian().to(weight.device) / torch.outer(smooth, smooth)
    # Output segments share one column-to-group map, so act-order groups must be static there.
    static_groups = calib.static_groups or (calib.actorder and len(spec.output_segments) > 1)
    result = gptq_quantize(weight, hessian, spec.weight_dtype, layer.config.weight_quant.granularity,
                           calib.blocksize, calib.percdamp, calib.actorder, static_groups)
    if layer.weight_group_size():
        return {"codes": result.codes, "scale": result.scale, "col_group": result.g_idx}
    scale = result.scale.expand(weight.shape[0], spec.weight_scale_columns).contiguous()
    return {"codes": result.codes, "scale": scale, "col_group": col_group}


def _weight_amax(weight: Tensor, layer: LayerPlan, col_group: Tensor, groups: int) -> Tensor:
    """Clip value per (row, scale column) ``(n, G)``; per-tensor scales share one value per column group."""
    method, granularity = layer.config.calib.type, layer.config.weight_quant.granularity
    n = weight.shape[0]
    blocks = torch.zeros(n, groups, device=weight.device)
    if method is Calibrate.AMAX or isinstance(granularity, PerTensor) and groups > 1:
        blocks = blocks.scatter_reduce(1, col_group.expand(n, -1), weight.abs(), "amax", include_self=True)
        if isinstance(granularity, PerTensor):
            blocks = blocks.amax(dim=0, keepdim=True).expand(n, groups)
        return blocks.contiguous()
    block_granularity = granularity if not isinstance(granularity, PerTensor) else PerTensor()
    if method is Calibrate.PERCENTILE:
        amax = percentile_clip(weight, layer.config.calib.percentile, block_granularity)
    else:
        amax = mse_clip(weight, layer.spec().weight_dtype, block_granularity)
    return amax.expand(n, groups).contiguous()


def _static_input_scales(layer: LayerPlan, spec: SegLinearSpec, stats: InputObserver,
                         smooth: Tensor) -> dict[str, Tensor]:
    """Input scales ``(J,)`` of ``x / λ`` per input segment (DualScale: per sign; asymmetric: + zero point)."""
    dtype = spec.input_dtype
    lo = (stats.min.to(smooth.device) / smooth).split(list(spec.input_segments))
    hi = (stats.max.to(smooth.device) / smooth).split(list(spec.input_segments))
    lo = torch.stack([part.min() for part in lo])
    hi = torch.stack([part.max() for part in hi])
    clip = _input_clip_factor(layer, spec, stats, smooth)
    lo, hi = lo * clip, hi * clip
    if spec.dual_scale:
        return {"input_scale": scale_from_amax(hi.clamp(min=0), dtype),
                "input_scale_neg": scale_from_amax(-lo.clamp(max=0), dtype, negative=True)}
    if not spec.input_symmetric:
        scale, zero_point = asymmetric_params(lo, hi, dtype)
        return {"input_scale": scale, "input_zero_point": zero_point}
    return {"input_scale": scale_from_amax(torch.maximum(lo.abs(), hi.abs()), dtype)}


def _input_clip_factor(layer: LayerPlan, spec: SegLinearSpec, stats: InputObserver, smooth: Tensor) -> Tensor:
    """``(J,)`` factor ≤ 1 shrinking each input segment's range (percentile / MSE calibrators), else 1."""
    method = layer.config.calib.type
    ones = torch.ones(len(spec.input_segments), device=smooth.device)
    if method not in (Calibrate.PERCENTILE, Calibrate.MSE) or stats.sample is None:
        return ones
    factors = []
    for part in (stats.sample.to(smooth.device) / smooth).split(list(spec.input_segments), dim=-1):
        amax = block_amax(part, PerTensor())
        if method is Calibrate.PERCENTILE:
            clipped = percentile_clip(part.abs(), layer.config.calib.percentile, PerTensor())
        else:
            clipped = mse_clip(part, spec.input_dtype, PerTensor(), lo=0.05)
        factors.append((clipped / amax.clamp(min=1e-30)).clamp(max=1).reshape(()))
    return torch.stack(factors)

