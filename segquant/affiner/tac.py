"""TAC-Diffusion (Yao et al., ECCV 2024): timestep-aware correction of a quantized diffusion model.

Two per-step parts, both fitted without training:

- **Noise estimation reconstruction (NER)**: per step a channel-wise coefficient ``a_{t,c}`` rescales
  the quantized noise estimate, ``ε' = a_{t,c} ε̂``, with ``a`` the closed-form minimiser of the
  pooled relative reconstruction loss ``Σ_r ‖a ⊙ ε̂_r − ε_r‖² / ‖ε_r‖²`` (a convex problem:
  ``a_c = Σ_r w_r Σ ε̂ ε / Σ_r w_r Σ ε̂²`` per channel). The paper masks outlier elements of this loss;
  this implementation keeps every element.
- **Input bias correction (IBC)**: the quantized trajectory drifts from the full-precision one, and
  the drift's mean biases the denoiser's *input*. Per step and channel, ``d_{t,c}`` is the mean of
  ``x_q − x_fp`` over a mini-batch (same prompts and noise, quantized run with NER applied vs the
  full-precision run); at sampling time the input becomes ``x − d_t`` before the denoiser runs.

IBC changes the denoiser's input, which a stepper (output only) cannot: :meth:`TACCorrector.install`
adds a forward pre-hook for it next to the stepper; ``install_stepper(pipe, tac)`` applies NER only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from segquant.affiner.base import StepCorrector, channel_sums, row_weights

STAT_NAMES = ("xx", "xy")


class TACCorrector(StepCorrector):
    """TAC-Diffusion (see the module docstring). ``input_bias``: step → ``(C,)`` bias of the input
    (fitted by ``process_affiner``, see :func:`segquant.affiner.process.fit_input_bias`)."""

    kind = "tac"

    def __init__(self, **common):
        super().__init__(**common)
        self.input_bias: dict[int, Tensor] = {}

    def accumulate(self, stats, q: Tensor, fp: Tensor) -> dict[str, Tensor]:
        w = row_weights(fp, 0.0).reshape(-1, 1, 1, 1)
        new = {"xx": channel_sums(w * q * q), "xy": channel_sums(w * q * fp)}
        return new if stats is None else {k: stats[k] + new[k] for k in STAT_NAMES}

    def solve(self, s: dict[str, Tensor]) -> dict[str, Tensor]:
        """``scale`` ``(C,)``: the NER coefficient per channel (1 where ε̂ is all zero)."""
        ok = s["xx"] > 0
        return {"scale": torch.where(ok, s["xy"] / s["xx"].where(ok, torch.ones_like(s["xx"])),
                                     torch.ones_like(s["xx"]))}

    def correct(self, step: int, q: Tensor) -> Tensor:
        return q * self.params[step]["scale"].to(q.device).reshape(1, -1, 1, 1)

    def correct_input(self, x: Tensor, step: int) -> Tensor:
        """The denoiser input ``x`` ((B, C, H, W) or packed (B, S, C)) minus ``strength`` × the step's input bias."""
        bias = self.input_bias.get(step)
        if bias is None or self.strength == 0.0:
            return x
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, 1, -1)
        return x - self.strength * bias.to(x).reshape(shape)

    def install(self, pipe: Any) -> contextlib.ExitStack:
        """Apply NER (stepper) and IBC (input pre-hook) on ``pipe`` until the returned stack closes."""
        from segquant.affiner.hooks import input_hook
        from segquant.pipeline.stepper import install_stepper

        stack = contextlib.ExitStack()
        stack.enter_context(input_hook(pipe, self.correct_input))
        stack.enter_context(install_stepper(pipe, self))
        return stack
