"""The channel corrector: per step a linear map over latent channels, shared by every pixel / token.

Per step ``t``, with ``ε̂`` the quantized prediction and ``x_t`` the denoiser's latent input at that step
(both ``(C,)`` at each pixel of the ``(C, H, W)`` grid; packed FLUX latents on their token grid, see
:mod:`segquant.affiner.layout`)::

    ε' = ε̂ + M_t ε̂ + N_t x_t + b_t          (M_t, N_t: C × C; b_t: C)

``use_input=False`` drops the ``N_t x_t`` term (pure channel mixing of ``ε̂``). With the feature vector
``z = [ε̂, x_t, 1]`` (``D = 2C + 1``, or ``C + 1``) and the target residual ``y = ε − ε̂``, the fit of one
step is one ridge least-squares problem pooled over every fitted row ``r`` and pixel ``p``::

    Σ_r w_r Σ_p ‖Wᵀ z_rp − y_rp‖²  +  λ1 (‖M‖² + ‖N‖²)  +  λ2 ‖b‖²,    W = [Mᵀ; Nᵀ; bᵀ] (D × C)
    w_r = α / n + (1 − α) / ‖ε_r‖²        (as the blockwise affiner)

solved from the sufficient statistics ``G = Σ w z zᵀ`` (D × D) and ``H = Σ w z yᵀ`` (D × C), accumulated
call by call in float64: ``(G + diag(λ1, …, λ1, λ2)) W = H``. ``2C² + C`` parameters per step (C = 4:
36, C = 16: 528), fitted on every pixel of every prompt, instead of two per latent element.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from segquant.errors import ConfigError
from segquant.affiner.base import StepCorrector, check_alpha, row_weights


def features(q: Tensor, x: Tensor | None) -> Tensor:
    """``z = [ε̂, x, 1]`` per pixel: ``(R, D, P)`` from grids ``q``, ``x`` ``(R, C, H, W)`` (``x`` may be
    ``None``)."""
    r, c = q.shape[:2]
    parts = [q.reshape(r, c, -1)]
    if x is not None:
        parts.append(x.reshape(r, c, -1))
    parts.append(torch.ones_like(parts[0][:, :1]))
    return torch.cat(parts, 1)


def channel_stats(q: Tensor, fp: Tensor, x: Tensor | None, weights: Tensor) -> dict[str, Tensor]:
    """``{"G": (D, D), "H": (D, C)}`` of grids ``q`` (ε̂), ``fp`` (ε), ``x`` ``(R, C, H, W)`` with row
    weights ``(R,)`` (float64)."""
    z = features(q, x)
    y = (fp - q).reshape(fp.shape[0], fp.shape[1], -1)
    wz = z * weights.to(z).reshape(-1, 1, 1)
    return {"G": torch.einsum("rdp,rep->de", wz, z), "H": torch.einsum("rdp,rcp->dc", wz, y)}


def solve_channel(stats: dict[str, Tensor], lambda1: float, lambda2: float) -> Tensor:
    """``W`` ``(D, C)`` of the ridge problem (module docstring); a singular system gets the minimum-norm
    solution."""
    g = stats["G"]
    penalty = torch.full((g.shape[0],), lambda1, dtype=g.dtype)
    penalty[-1] = lambda2
    return torch.linalg.pinv(g + torch.diag(penalty), hermitian=True) @ stats["H"]


class ChannelCorrector(StepCorrector):
    """The channel corrector (see the module docstring); a stepper once fitted (with ``use_input``: apply
    it through :meth:`install` / ``installed(pipe, corr)``, which hand it the denoiser input).

    Args:
        use_input: include the ``N_t x_t`` term.
        alpha: weight of the MSE against the relative MSE, in [0, 1].
        lambda1, lambda2: ridge penalties on ``M``, ``N`` and on ``b`` (≥ 0).
        noise_target, enable_timesteps, packed_grid: see :class:`~segquant.affiner.base.StepCorrector`.
    """

    kind = "channel"

    def __init__(self, use_input: bool = True, alpha: float = 0.5, lambda1: float = 0.0, lambda2: float = 0.0,
                 **common):
        super().__init__(**common)
        if lambda1 < 0 or lambda2 < 0:
            raise ConfigError(f"channel: lambda1={lambda1}, lambda2={lambda2} must be ≥ 0")
        self.use_input, self.alpha = bool(use_input), check_alpha(alpha)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    @property
    def uses_input(self) -> bool:
        """Whether ``fit``/``apply`` need the call's inputs (``x_t``)."""
        return self.use_input

    def config(self) -> dict:
        return {**super().config(), "use_input": self.use_input, "alpha": self.alpha,
                "lambda1": self.lambda1, "lambda2": self.lambda2}

    def accumulate(self, stats, q: Tensor, fp: Tensor, x: Tensor | None = None) -> dict[str, Tensor]:
        new = channel_stats(q, fp, x, row_weights(fp, self.alpha))
        return new if stats is None else {k: stats[k] + new[k] for k in ("G", "H")}

    def solve(self, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """``M``, ``N`` (``use_input``) ``(C, C)`` and ``b`` ``(C,)``."""
        w = solve_channel(stats, self.lambda1, self.lambda2)
        c = w.shape[1]
        out = {"M": w[:c].T.contiguous(), "b": w[-1].contiguous()}
        if self.use_input:
            out["N"] = w[c:2 * c].T.contiguous()
        return out

    def correct(self, step: int, q: Tensor, x: Tensor | None = None) -> Tensor:
        p = {k: v.to(q.device) for k, v in self.params[step].items()}
        out = q + torch.einsum("cd,rdhw->rchw", p["M"], q) + p["b"].reshape(1, -1, 1, 1)
        if "N" in p:
            out = out + torch.einsum("cd,rdhw->rchw", p["N"], x)
        return out

    def install(self, pipe: Any):
        """Apply the correction on ``pipe``'s denoiser outputs, with each call's input ``x_t``, from now on;
        returns the installed tap (``.remove()`` it, or use the call as a context manager)."""
        from segquant.pipeline.tap import DenoiserTap

        def after(call):
            return call.with_sample(self.apply(call.sample, call.info, call.inputs))

        return DenoiserTap(pipe, after=after).install()
