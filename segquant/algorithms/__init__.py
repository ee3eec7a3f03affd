"""Quantization algorithms as pure functions on tensors (no module state, inputs never modified).

* :mod:`.smoothquant` — SmoothQuant factors, alpha grid and alpha search.
* :mod:`.svd` — SVDQuant's rank-r 16-bit branch.
* :mod:`.gptq` — GPTQ with the Cholesky factor of the inverse Hessian, lazy blocks, act-order, groups.
* :mod:`.clipping` — AMAX, percentile and MSE clip search.
* :mod:`.dualscale` — DualScale: which activations get it, the scale pair, the split fake-quant.

Segments are handled by the caller: call a function on one output segment's rows ``W_s`` (and its
inputs) at a time. The running statistics they consume (input min/max, GPTQ's Hessian) are in
:mod:`segquant.observers`.
"""

from segquant.algorithms.clipping import amax_clip, mse_clip, percentile_clip
from segquant.algorithms.dualscale import dualscale_scales, dynamic_fake_quant_dualscale, fake_quant_dualscale
from segquant.algorithms.gptq import GPTQResult, gptq_quantize
from segquant.algorithms.smoothquant import alpha_grid, search_alpha, smooth_activation, smooth_factors, smooth_weight
from segquant.algorithms.svd import lowrank_branch, lowrank_residual

__all__ = [
    "GPTQResult",
    "alpha_grid",
    "amax_clip",
    "dualscale_scales",
    "dynamic_fake_quant_dualscale",
    "fake_quant_dualscale",
    "gptq_quantize",
    "lowrank_branch",
    "lowrank_residual",
    "mse_clip",
    "percentile_clip",
    "search_alpha",
    "smooth_activation",
    "smooth_factors",
    "smooth_weight",
]
