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
        noise_target, enable_timesteps, packed_grid: see :class:`StepCorrector`.
    """

    kind = "affiner"

    def __init__(self, blocksize: int = 1, alpha: float = 0.5, lambda1: float = 0.0, lambda2: float = 0.0,
                 **common):
        super().__init__(**common)
        if int(blocksize) < 1 or lambda1 < 0 or lambda2 < 0:
            raise ConfigError(f"affiner: blocksize={blocksize} must be ≥ 1, lambda1={lambda1}, "
                              f"lambda2={lambda2} must be ≥ 0")
        self.blocksize, self.alpha = int(blocksize), check_alpha(alpha)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    def config(self) -> dict:
        return {**super().config(), "blocksize": self.blocksize, "alpha": self.alpha,
                "lambda1": self.lambda1, "lambda2": self.lambda2}

    def accumulate(self, stats, q: Tensor, fp: Tensor) -> dict[str, Tensor]:
        new = affine_stats(q, fp, row_weights(fp, self.alpha), self.blocksize)
        return new if stats is None else {k: stats[k] + new[k] for k in STAT_NAMES}

    def solve(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        k, b = solve_affine(stats, self.lambda1, self.lambda2)
        return {"K": k, "b": b}

    def correct(self, step: int, q: Tensor) -> Tensor:
        if step not in self._cache:
            p = self.params[step]
            self._cache[step] = tuple(expand_blocks(p[n], self.blocksize, q.shape[1:]).to(q.device)
                                      for n in ("K", "b"))
        k, b = self._cache[step]
        return torch.addcmul(b, k, q)
