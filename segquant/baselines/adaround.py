"""AdaRound (Nagel et al., ICML 2020) inside BRECQ-style block reconstruction (Li et al., ICLR 2021), as
Q-Diffusion uses them for the weights.

A weight ``W`` ``(N, K)`` with fixed scales ``s`` ``(N, K)`` (expanded) is quantized to
``Ŵ = s · clamp(⌊W/s⌋ + h(V), qmin, qmax)`` where ``h(V) = clamp(sigmoid(V)(ζ − γ) + γ, 0, 1)``
(rectified sigmoid, ``ζ = 1.1``, ``γ = −0.1``) is learned per element instead of rounding to nearest.
``V`` starts where ``h(V)`` equals the nearest rounding's fractional part, and minimises, for all layers of
one block jointly, the block's output error on calibration inputs plus the regulariser
``λ Σ (1 − |2h(V) − 1|^β)`` that pushes every ``h`` to 0 or 1 (``β`` annealed from 20 to 2 after a
warm-up with ``λ = 0``). The final rounding is ``h(V) ≥ 0.5``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from segquant.enums import DType

ZETA, GAMMA = 1.1, -0.1
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaRoundSettings:
    """``iters`` optimisation steps per block (Adam, ``lr``), rounding loss weight ``reg``, ``beta`` annealed
    from ``beta_start`` to ``beta_end`` after the first ``warmup`` fraction of the steps."""

    iters: int = 100
    lr: float = 1e-2
    reg: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2

    def beta(self, step: int) -> float | None:
        """The regulariser's ``β`` at ``step`` (``None`` during the warm-up: no regulariser)."""
        start = int(self.warmup * self.iters)
        if step < start:
            return None
        frac = (step - start) / max(1, self.iters - start)
        return self.beta_end + 0.5 * (self.beta_start - self.beta_end) * (1 + math.cos(math.pi * frac))


class AdaRoundWeight(nn.Module):
    """Parametrization: ``W`` ``(N, K)`` -> soft-quantized ``s · clamp(⌊W/s⌋ + h(V))`` with the fixed
    float32 scales ``scale`` ``(N, K)`` and the learned ``V`` ``(N, K)``."""

    def __init__(self, weight: Tensor, scale: Tensor, dtype: DType):
        super().__init__()
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("floor", torch.floor(weight.detach().float() / self.scale))
        self.qmin, self.qmax = dtype.qmin, dtype.qmax
        rest = (weight.detach().float() / self.scale - self.floor).clamp(1e-4, 1 - 1e-4)
        # h(V) = rest at the start: sigmoid(V) = (rest - γ) / (ζ - γ)
        self.v = nn.Parameter(torch.logit((rest - GAMMA) / (ZETA - GAMMA)))

    def h(self) -> Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    hard = False  # True: the hard rounding ``h(V) >= 0.5`` (before training: round-to-nearest)

    def forward(self, _weight: Tensor) -> Tensor:
        q = self.codes() if self.hard else (self.floor + self.h()).clamp(self.qmin, self.qmax)
        return (self.scale * q).to(_weight.dtype)

    def regulariser(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def codes(self) -> Tensor:
        """The hard-rounded integer codes (float32 ``(N, K)``)."""
        return (self.floor + (self.h() >= 0.5).float()).clamp(self.qmin, self.qmax)


def nearest_codes(weight: Tensor, scale: Tensor, dtype: DType) -> Tensor:
    """Round-to-nearest codes of ``weight`` ``(N, K)`` with scales ``(N, K)`` (float32), for comparison."""
    return torch.round(weight.float() / scale).clamp(dtype.qmin, dtype.qmax)


def reconstruct_block(run: Callable[[int], Tensor], targets: list[Tensor], layers: dict[str, nn.Linear],
                      scales: dict[str, Tensor], dtype: DType, settings: AdaRoundSettings) -> dict[str, Tensor]:
    """Learn the rounding of every linear in ``layers`` (in place parametrized, then restored) so that
    ``run(i)`` — the block's output on calibration input ``i``, ``(B, F)`` float32 — matches ``targets[i]``
    (loss: squared error summed over features, mean over samples, as in BRECQ).

    ``scales[name]``: float32 ``(N, K)`` per layer. Returns ``{name: codes (N, K) float32}``; the layers'
    weights are unchanged afterwards.
    """
    params = {}
    for name, linear in layers.items():
        parametrize.register_parametrization(linear, "weight", AdaRoundWeight(linear.weight, scales[name], dtype))
        params[name] = linear.parametrizations.weight[0]
    try:
        before = _hard_loss(run, targets, params.values())
        opt = torch.optim.Adam([p.v for p in params.values()], lr=settings.lr)
        gen = torch.Generator().manual_seed(0)
        for step in range(settings.iters):
            i = int(torch.randint(len(targets), (1,), generator=gen))
            loss = (run(i) - targets[i]).pow(2).sum(1).mean()
            beta = settings.beta(step)
            if beta is not None:
                loss = loss + settings.reg * sum(p.regulariser(beta) for p in params.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
        logger.info("AdaRound %s: block output error %.4g with nearest rounding, %.4g learned", list(layers),
                    before, _hard_loss(run, targets, params.values()))
        return {name: p.codes().detach() for name, p in params.items()}
    finally:
        for linear in layers.values():
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)


@torch.no_grad()
def _hard_loss(run: Callable[[int], Tensor], targets: list[Tensor], params) -> float:
    """The reconstruction loss over every target with the hard rounding of ``params``."""
    for p in params:
        p.hard = True
    try:
        return sum(float((run(i) - t).pow(2).sum(1).mean()) for i, t in enumerate(targets)) / len(targets)
    finally:
        for p in params:
            p.hard = False
