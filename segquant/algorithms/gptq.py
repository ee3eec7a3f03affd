"""GPTQ (Frantar et al., 2022): quantize a weight column by column, compensating each column's error.

Given the layer-input Hessian ``H = 2 X Xᵀ`` ``(K, K)``, GPTQ quantizes the columns of ``W`` ``(N, K)`` in
order; after column ``q`` it spreads the error ``(w_q − ŵ_q)`` over the columns not yet quantized with
the optimal-brain-surgeon update ``W[:, rest] −= (w_q − ŵ_q) / [H⁻¹]_qq · [H⁻¹]_q,rest``, where ``H⁻¹`` is
the inverse Hessian of the remaining columns. Those successive inverses are exactly the rows of the
upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = Uᵀ U``): ``[H⁻¹]_q,rest / [H⁻¹]_qq = U_q,rest / U_qq``.
Updates are applied lazily per block of ``blocksize`` columns (one GEMM per block).

Options, as in the paper's reference code: damping ``percdamp · mean(diag H)`` on the diagonal; dead
columns (``H_jj = 0``, input always 0) are zeroed; ``actorder`` processes columns by decreasing
``H_jj``; group-wise scales (``PerGroup(g)``) are computed when a group starts from its current,
error-compensated columns, or up front from the original weight (``static_groups``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import (
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    block_amax,
    check_finite,
    dequantize_codes,
    quantize_codes,
    scale_from_amax,
)

logger = logging.getLogger(__name__)

ClipFn = Callable[[Tensor, Granularity], Tensor]
"""``(block (rows, cols) float, granularity) -> amax`` scale-shaped (see ``numerics.block_amax``)."""


@dataclass(frozen=True, eq=False)
class GPTQResult:
    """Output of :func:`gptq_quantize`.

    Attributes:
        codes: ``(N, K)`` in ``dtype.torch_dtype``, columns in the weight's original order.
        scale: ``(N, G)`` float32 weight scales, ``G`` = number of groups (1 unless ``PerGroup``).
        g_idx: ``(K,)`` int64, the scale column (group) of each original weight column.
        perm: ``(K,)`` int64 processing order with ``actorder`` (column ``perm[i]`` went ``i``-th), else None.
        dtype: the quantized format.
    """

    codes: Tensor
    scale: Tensor
    g_idx: Tensor
    perm: Tensor | None
    dtype: DType

    def dequantize(self) -> Tensor:
        """``Ŵ`` ``(N, K)`` float32 in the original column order: ``scale[:, g_idx] · codes``."""
        return dequantize_codes(self.codes, self.scale[:, self.g_idx])


def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    dtype: DType,
    granularity: Granularity = PerChannel(),
    blocksize: int = 128,
    percdamp: float = 0.01,
    actorder: bool = False,
    static_groups: bool = False,
    clip_fn: ClipFn | None = None,
) -> GPTQResult:
    """Quantize ``weight`` with GPTQ.

    Args:
        weight: ``(N, K)`` float weight (not modified). Computation is float32, or float64 when
            ``weight`` is float64.
        hessian: ``(K, K)`` ``2/n Σ x xᵀ`` of the layer inputs (e.g. ``HessianObserver.hessian()``).
        dtype: target format (integer or FP8).
        granularity: ``PerTensor``, ``PerChannel`` or ``PerGroup(g)`` (``g`` must divide ``K``).
        blocksize: columns per lazy-update block.
        percdamp: damping as a fraction of the mean Hessian diagonal.
        actorder: process columns by decreasing ``H_jj``.
        static_groups: with ``PerGroup``, compute all group scales before the loop.
        clip_fn: chooses the amax of a block (default: abs-max); e.g. an MSE clip search.
    """
    _validate(weight, hessian, dtype, granularity, blocksize, percdamp)
    n, k = weight.shape
    cdt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    clip_fn = clip_fn or block_amax
    w = weight.detach().to(cdt).clone()
    h = hessian.detach().to(device=w.device, dtype=cdt).clone()
    check_finite(w, "GPTQ weight")
    check_finite(h, "GPTQ Hessian")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    group = granularity.group_size if isinstance(granularity, PerGroup) else None
    scale = _initial_scales(w, dtype, granularity, static_groups, clip_fn)
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if actorder else None
    order = perm if perm is not None else torch.arange(k, device=w.device)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]
    pos_group = _position_groups(order, group, static_groups)
    u = _inverse_hessian_cholesky(h, percdamp)
    dynamic = group is not None and not static_groups
    codes_p = _gptq_loop(w, u, scale, pos_group, dtype, blocksize, group if dynamic else None, clip_fn)
    codes = torch.empty_like(codes_p)
    codes[:, order] = codes_p
    g_idx = torch.empty(k, dtype=torch.int64, device=w.device)
    g_idx[order] = pos_group
    return GPTQResult(codes=codes, scale=scale, g_idx=g_idx, perm=perm, dtype=dtype)


def _validate(
    weight: Tensor, hessian: Tensor, dtype: DType, granularity: Granularity, blocksize: int, percdamp: float
) -> None:
    if weight.dim() != 2:
        raise ConfigError(f"gptq: weight must be 2-D (N, K), got shape {tuple(weight.shape)}")
    k = weight.shape[1]
    if tuple(hessian.shape) != (k, k):
        raise CalibrationError(
            f"gptq: Hessian shape {tuple(hessian.shape)} does not match weight {tuple(weight.shape)}"
        )
    if dtype.is_passthrough:
        raise ConfigError(f"gptq: dtype {dtype.value!r} is not a quantized format")
    if not isinstance(granularity, (PerTensor, PerChannel, PerGroup)):
        raise ConfigError(f"gptq: granularity {granularity!r} is not allowed; use PerTensor, PerChannel or PerGroup")
    if isinstance(granularity, PerGroup) and k % granularity.group_size:
        raise ConfigError(f"groupsize: {granularity.group_size} does not divide the weight's {k} input features")
    if not isinstance(blocksize, int) or blocksize <= 0:
        raise ConfigError(f"blocksize: {blocksize!r} must be a positive integer")
    if not percdamp >= 0:
        raise ConfigError(f"percdamp: {percdamp!r} must be >= 0")


def _scales(block: Tensor, dtype: DType, granularity: Granularity, clip_fn: ClipFn) -> Tensor:
    """float32 scales of ``block`` ``(N, c)`` for ``granularity``, broadcast to ``(N, G)``."""
    scale = scale_from_amax(clip_fn(block, granularity), dtype)
    return scale.expand(block.shape[0], scale.shape[1]).clone()


def _initial_scales(w: Tensor, dtype: DType, gran: Granularity, static_groups: bool, clip_fn: ClipFn) -> Tensor:
    """``(N, G)`` float32: final scales, except dynamic groups (zeros, filled during the loop)."""
    if isinstance(gran, PerGroup) and not static_groups:
        return torch.zeros(w.shape[0], w.shape[1] // gran.group_size, dtype=torch.float32, device=w.device)
    return _scales(w, dtype, gran, clip_fn)


def _position_groups(order: Tensor, group: int | None, static_groups: bool) -> Tensor:
    """``(K,)`` int64: the scale column used by the column processed at each position."""
    k = order.numel()
    if group is None:
        return torch.zeros(k, dtype=torch.int64, device=order.device)
    if static_groups:
        return order // group  # groups of the original contiguous columns
    return torch.arange(k, device=order.device) // group  # groups in processing order


def _inverse_hessian_cholesky(h: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp·I)⁻¹`` (``(H + damp·I)⁻¹ = Uᵀ U``), same dtype as ``h``.

    No explicit inverse: with ``J`` the reversal permutation, let ``J H J = L' L'ᵀ`` (lower Cholesky).
    Then ``H = R Rᵀ`` with ``R = J L' J`` upper triangular, so ``H⁻¹ = R⁻ᵀ R⁻¹ = Uᵀ U`` with
    ``U = R⁻¹ = J L'⁻¹ J`` upper triangular with a positive diagonal: by uniqueness it is the Cholesky
    factor. ``L'⁻¹`` is one triangular solve (``O(K³/3)``), several times faster than
    ``cholesky_inverse`` followed by a second Cholesky.
    """
    damp = percdamp * torch.diag(h).mean()
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lower_flipped, info = torch.linalg.cholesky_ex(h.flip(0, 1))
    if int(info) != 0:
        raise CalibrationError(
            f"gptq: the damped Hessian is not positive definite (percdamp={percdamp}); increase percdamp "
            "or calibrate on more samples"
        )
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    upper = torch.linalg.solve_triangular(lower_flipped, eye, upper=False).flip(0, 1)
    if not bool(torch.isfinite(torch.diagonal(upper)).all()):
        raise CalibrationError(
            f"gptq: the inverse Hessian is numerically singular (percdamp={percdamp}); increase percdamp"
        )
    return upper


def _gptq_loop(
    w: Tensor,
    u: Tensor,
    scale: Tensor,
    pos_group: Tensor,
    dtype: DType,
    blocksize: int,
    dyn_group: int | None,
    clip_fn: ClipFn,
) -> Tensor:
    """Quantize ``w`` ``(N, K)`` (processing order, modified in place) with lazy block updates.

    ``u``: ``(K, K)`` upper Cholesky factor of the inverse Hessian. ``scale`` ``(N, G)`` is filled in
    place for dynamic groups (``dyn_group`` set). Returns the codes ``(N, K)`` in processing order.
    """
    n, k = w.shape
    codes = torch.empty(n, k, dtype=dtype.torch_dtype, device=w.device)
    groups = pos_group.tolist()  # host-side list: no device sync per column
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if dyn_group is not None and j % dyn_group == 0:
                cur = _current_columns(w, w1, err1, u, i1, i, min(j + dyn_group, k))
                scale[:, j // dyn_group] = _scales(cur, dtype, PerChannel(), clip_fn)[:, 0]
            s = scale[:, groups[j] : groups[j] + 1].to(w.dtype)  # (N, 1)
            col = w1[:, i : i + 1]
            q = quantize_codes(col, s, dtype)
            codes[:, j] = q[:, 0]
            err = (col - dequantize_codes(q, s).to(w.dtype)) / u1[i, i]  # (N, 1)
            w1[:, i:] -= err @ u1[i : i + 1, i:]
            err1[:, i : i + 1] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes


def _current_columns(w: Tensor, w1: Tensor, err1: Tensor, u: Tensor, i1: int, i: int, end: int) -> Tensor:
    """The error-compensated values of columns ``[i1 + i, end)`` as they are *now* (``(N, end − i1 − i)``).

    Columns inside the current block are up to date in ``w1``; columns past it (``>= i2``) still miss
    the pending lazy update from this block's already-quantized columns, which is added here.
    """
    i2 = i1 + w1.shape[1]
    inside = w1[:, i : min(end, i2) - i1]
    if end <= i2:
        return inside
    outside = w[:, i2:end] - err1[:, :i] @ u[i1 : i1 + i, i2:end]
    return torch.cat([inside, outside], dim=1)
