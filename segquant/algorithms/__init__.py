"""Quantization algorithms as pure functions on tensors (no module state, inputs never modified).

* :mod:`.smoothquant` — SmoothQuant factors, alpha grid and alpha search.
* :mod:`.svd` — SVDQuant's rank-r 16-bit branch.
* :mod:`.gptq` — GPTQ with the Cholesky factor of the inverse Hessian, lazy blocks, act-order, groups.
* :mod:`.hessian` — running Hessian ``2/n Σ x xᵀ`` for GPTQ.
* :mod:`.clipping` — AMAX, percentile (incl. a running histogram) and MSE clip search.

Segments are handled by the caller: call a function on one output segment's rows ``W_s`` (and its
inputs) at a time.
"""

from segquant.algorithms.clipping import HistogramObserver, amax_clip, mse_clip, percentile_clip
from segquant.algorithms.gptq import GPTQResult, gptq_quantize
from segquant.algorithms.hessian import HessianObserver
from segquant.algorithms.smoothquant import (
    alpha_grid,
    fake_quant_smoothed_layer,
    search_alpha,
    smooth_activation,
    smooth_factors,
    smooth_weight,
)
from segquant.algorithms.svd import lowrank_branch, lowrank_forward, lowrank_residual

__all__ = [
    "GPTQResult",
    "HessianObserver",
    "HistogramObserver",
    "alpha_grid",
    "amax_clip",
    "fake_quant_smoothed_layer",
    "gptq_quantize",
    "lowrank_branch",
    "lowrank_forward",
    "lowrank_residual",
    "mse_clip",
    "percentile_clip",
    "search_alpha",
    "smooth_activation",
    "smooth_factors",
    "smooth_weight",
]
