"""The blockwise affiner: per step ``ε' = K_t ⊙ ε̂ + b_t``, fitted in closed form on pooled statistics.

``K_t`` and ``b_t`` are constant over ``blocksize × blocksize`` blocks of the latent grid, per channel
(``blocksize=1``: one pair per element; edge blocks of an H or W that ``blocksize`` does not divide
are smaller). For one step, over every fitted row ``r`` (all prompts, all calls of the step) and
element ``e`` of block ``j``, the loss is

    Σ_r w_r Σ_e (K_j ε̂_re + b_j − ε_re)²  +  λ1 Σ_j (K_j − 1)²  +  λ2 Σ_j b_j²,
    w_r = α / n + (1 − α) / ‖ε_r‖²        (α·MSE + (1 − α)·relative MSE, n elements per row)

with ε the full-precision prediction. It separates per block into a 2×2 linear system in the
sufficient statistics ``Sw = Σ w``, ``Sx = Σ w ε̂``, ``Sxx = Σ w ε̂²``, ``Sy = Σ w ε``, ``Sxy = Σ w ε̂ ε``::

    [Sxx + λ1   Sx     ] [K]   [Sxy + λ1]
    [Sx         Sw + λ2] [b] = [Sy      ]

so the fit is one pooled least-squares problem over all samples of the step, accumulated call by
call (float64). A singular block (ε̂ constant over it, no λ1) keeps ``K = 1`` and fits only ``b``.

``holdout=True`` keeps a block's correction only where it generalises: the rows of each step are split
into two folds (alternating rows), each fold's fit is scored on the other fold's statistics
(``L(K, b) = K²Sxx + 2Kb·Sx + b²Sw − 2K·Sxy − 2b·Sy``, the data term up to the constant ``Σ w ε²``), and
where the two cross-fitted losses together are not below the identity's (``K = 1, b = 0``) the block
keeps the identity; elsewhere it gets the fit on all rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segquant.errors import ConfigError
from segquant.affiner.base import StepCorrector, check_alpha, row_weights

STAT_NAMES = ("w", "x", "xx", "y", "xy")


def block_sums(t: Tensor, blocksize: int) -> Tensor:
    """Sum ``(C, H, W)`` over ``blocksize × blocksize`` blocks: ``(C, ceil(H/bs), ceil(W/bs))``."""
    c, h, w = t.shape
    pad_h, pad_w = -h % blocksize, -w % blocksize
    t = F.pad(t, (0, pad_w, 0, pad_h))
    return t.reshape(c, (h + pad_h) // blocksize, blocksize, (w + pad_w) // blocksize, blocksize).sum(dim=(2, 4))


def affine_stats(q: Tensor, fp: Tensor, weights: Tensor, blocksize: int) -> dict[str, Tensor]:
    """Sufficient statistics of rows ``q`` (ε̂), ``fp`` (ε) ``(R, C, H, W)`` with row weights ``(R,)``:
    ``{w, x, xx, y, xy}`` each ``(C, Hb, Wb)`` (float64)."""
    w = weights.reshape(-1, 1, 1, 1).to(q)
    terms = {"w": w.expand_as(q), "x": w * q, "xx": w * q * q, "y": w * fp, "xy": w * q * fp}
    return {k: block_sums(v.sum(0), blocksize) for k, v in terms.items()}


def solve_affine(s: dict[str, Tensor], lambda1: float, lambda2: float) -> tuple[Tensor, Tensor]:
    """``(K, b)`` per block from the statistics (see the module docstring)."""
    a11, a12, a22 = s["xx"] + lambda1, s["x"], s["w"] + lambda2
    r1, r2 = s["xy"] + lambda1, s["y"]
    det = a11 * a22 - a12 * a12
    ok = det.abs() > 1e-12 * (a11.abs() * a22.abs()).clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    k = torch.where(ok, (r1 * a22 - a12 * r2) / safe, torch.ones_like(det))
    b_fixed_k = (r2 - a12) / a22.where(a22 > 0, torch.ones_like(a22))
    b = torch.where(ok, (a11 * r2 - a12 * r1) / safe, b_fixed_k.where(a22 > 0, torch.zeros_like(a22)))
    return k, b


def fitted_loss(s: dict[str, Tensor], k: Tensor, b: Tensor) -> Tensor:
    """The weighted data loss of ``(K, b)`` on statistics ``s``, per block, without its constant ``Σ w ε²``."""
    return k * k * s["xx"] + 2 * k * b * s["x"] + b * b * s["w"] - 2 * k * s["xy"] - 2 * b * s["y"]


def holdout_mask(folds: list[dict[str, Tensor]], lambda1: float, lambda2: float) -> Tensor:
    """Blocks whose two-fold cross-fitted loss is below the identity's (see the module docstring)."""
    cross = sum(fitted_loss(folds[1 - f], *solve_affine(folds[f], lambda1, lambda2)) for f in (0, 1))
    one = torch.ones_like(folds[0]["w"])
    identity = sum(fitted_loss(fold, one, torch.zeros_like(one)) for fold in folds)
    return cross < identity


def expand_blocks(p: Tensor, blocksize: int, shape: tuple[int, ...]) -> Tensor:
    """Block parameters ``(C, Hb, Wb)`` as a full ``(C, H, W)`` map."""
    full = p.repeat_interleave(blocksize, 1).repeat_interleave(blocksize, 2)
    return full[:, : shape[-2], : shape[-1]]


class BlockwiseAffiner(StepCorrector):
    """The affiner (see the module docstring); a stepper once fitted.

    Args:
        blocksize: block edge in latent elements (packed FLUX latents: in tokens), ≥ 1.
        alpha: weight of the MSE against the relative MSE, in [0, 1].
        lambda1, lambda2: ridge penalties on ``K − 1`` and ``b`` (≥ 0).
        holdout: keep only the blocks whose correction beats the identity on held-out rows.
        noise_target, enable_timesteps, packed_grid: see :class:`StepCorrector`.
    """

    kind = "affiner"

    def __init__(self, blocksize: int = 1, alpha: float = 0.5, lambda1: float = 0.0, lambda2: float = 0.0,
                 holdout: bool = False, **common):
        super().__init__(**common)
        self.holdout = bool(holdout)
        if int(blocksize) < 1 or lambda1 < 0 or lambda2 < 0:
            raise ConfigError(f"affiner: blocksize={blocksize} must be ≥ 1, lambda1={lambda1}, "
                              f"lambda2={lambda2} must be ≥ 0")
        self.blocksize, self.alpha = int(blocksize), check_alpha(alpha)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    def config(self) -> dict:
        return {**super().config(), "blocksize": self.blocksize, "alpha": self.alpha,
                "lambda1": self.lambda1, "lambda2": self.lambda2, "holdout": self.holdout}

    def accumulate(self, stats, q: Tensor, fp: Tensor) -> dict:
        """``{"folds": [stats of even rows, stats of odd rows], "rows": rows seen}`` (rows counted per step)."""
        weights, seen = row_weights(fp, self.alpha), 0 if stats is None else stats["rows"]
        fold = (torch.arange(q.shape[0], device=q.device) + seen) % 2
        new = [affine_stats(q[fold == f], fp[fold == f], weights[fold == f], self.blocksize) for f in (0, 1)]
        if stats is not None:
            new = [{k: old[k] + part[k] for k in STAT_NAMES} for old, part in zip(stats["folds"], new)]
        return {"folds": new, "rows": seen + q.shape[0]}

    def solve(self, stats: dict) -> dict[str, Tensor]:
        folds = stats["folds"]
        k, b = solve_affine({n: folds[0][n] + folds[1][n] for n in STAT_NAMES}, self.lambda1, self.lambda2)
        if self.holdout:
            keep = holdout_mask(folds, self.lambda1, self.lambda2)
            k, b = torch.where(keep, k, torch.ones_like(k)), torch.where(keep, b, torch.zeros_like(b))
        return {"K": k, "b": b}

    def correct(self, step: int, q: Tensor) -> Tensor:
        if step not in self._cache:
            p = self.params[step]
            self._cache[step] = tuple(expand_blocks(p[n], self.blocksize, q.shape[1:]).to(q.device)
                                      for n in ("K", "b"))
        k, b = self._cache[step]
        return torch.addcmul(b, k, q)
