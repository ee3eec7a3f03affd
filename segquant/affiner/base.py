"""The per-step correction protocol and the base class of segquant's corrections.

**Protocol** (what ``process_affiner`` drives and ``thirdparty_affiner`` must offer)::

    corr.fit(pred_q, pred_fp, info, inputs)  # add one denoiser call (both predictions at the same input)
                                             # to step info.step_index's statistics and refit that step
    corr.apply(pred_q, info) -> Tensor       # the corrected prediction, same shape and dtype
    corr(pred_q, info) -> Tensor             # = apply: the object is a stepper (install_stepper)

``pred_q``, ``pred_fp``: the denoiser outputs of the whole call, ``(B, C, H, W)`` or packed FLUX
``(B, S, C)``; ``info``: :class:`~segquant.pipeline.steps.StepInfo`; ``inputs``: the call's keyword
inputs (for ``img_ids``). Optional: ``finish(num_steps)`` after fitting, ``install(pipe)`` when the
correction needs more than the stepper hook (TAC's input bias), ``save(folder)``.

:class:`StepCorrector` implements the bookkeeping shared by the affiner, PTQD and TAC: the
``noise_target`` rows, the ``enable_timesteps`` subset, the fitted step count, timesteps and latent
grid (checked at apply: a correction fitted for 28 steps used with 50 steps, or on another latent
shape, raises :class:`CorrectionMismatchError`), the parameters per step (``params``) and the
``strength`` at which the correction is applied (``q + strength · (correct(q) − q)``; 0 applies
nothing; ``process_affiner`` can choose it on held-out prompts).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor

from segquant.errors import ConfigError
from segquant.affiner.layout import from_grid, packed_grid, to_grid

logger = logging.getLogger(__name__)

NOISE_TARGETS = {"all": None, "uncond": "uncond", "text": "cond"}
_T_TOL = 1e-3


class CorrectionMismatchError(ConfigError):
    """A fitted correction is applied where it was not fitted (step count, timestep or latent shape)."""


class StepCorrector:
    """Base of the per-step corrections (see the module docstring).

    Args:
        noise_target: rows fitted and corrected: "all", "uncond" or "text" (the conditional rows);
            the last two need classifier-free guidance.
        enable_timesteps: step indices to fit and correct (default all); other steps pass unchanged.
        packed_grid: ``(h, w)`` token grid of packed latents (see ``segquant.affiner.layout``).
        strength: fraction of the fitted correction applied, ≥ 0 (1: all of it, 0: none).
    """

    kind = "base"

    def __init__(self, noise_target: str = "all", enable_timesteps: list[int] | None = None,
                 packed_grid: tuple[int, int] | None = None, strength: float = 1.0):
        if noise_target not in NOISE_TARGETS:
            raise ConfigError(f"noise_target {noise_target!r}: expected one of {', '.join(NOISE_TARGETS)}")
        if not float(strength) >= 0.0:
            raise ConfigError(f"strength={strength}: expected a fraction ≥ 0 of the fitted correction")
        self.noise_target, self.packed_grid, self.strength = noise_target, packed_grid, float(strength)
        self.enable_timesteps = None if enable_timesteps is None else sorted(int(s) for s in enable_timesteps)
        self.params: dict[int, dict[str, Tensor]] = {}
        self.timesteps: dict[int, float] = {}
        self.grid_shape: tuple[int, ...] | None = None
        self.num_steps: int | None = None
        self._stats: dict[int, Any] = {}
        self._saw_uncond = False
        self._cache: dict[int, Any] = {}  # per step: parameters expanded to the grid (subclasses)
        self.validation: dict[float, float] = {}  # strength -> held-out score, when process_affiner chose it

    # -- configuration shared with save/load ---------------------------------------------------
    def config(self) -> dict:
        """JSON-able constructor arguments."""
        return {"noise_target": self.noise_target, "enable_timesteps": self.enable_timesteps,
                "packed_grid": None if self.packed_grid is None else list(self.packed_grid),
                "strength": self.strength}

    def enabled(self, step: int) -> bool:
        return self.enable_timesteps is None or step in self.enable_timesteps

    def rows(self, info) -> list[int]:
        """Indices of the rows of this call that ``noise_target`` selects."""
        branch = NOISE_TARGETS[self.noise_target]
        return [i for i, b in enumerate(info.branches) if branch is None or b == branch]

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, pred_q: Tensor, pred_fp: Tensor, info, inputs: dict | None = None) -> None:
        """Add one call's predictions to the statistics of ``info.step_index`` and refit that step."""
        step = info.step_index
        self._saw_uncond |= "uncond" in info.branches
        if not self.enabled(step):
            return
        if self.packed_grid is None and pred_q.ndim == 3:
            self.packed_grid = packed_grid(pred_q, inputs)
        rows = self.rows(info)
        if not rows:
            return
        q = to_grid(pred_q, self.packed_grid)[rows].detach().double()
        fp = to_grid(pred_fp, self.packed_grid)[rows].detach().double()
        self._check_grid(q, fitting=True)
        self.timesteps[step] = float(info.timestep)
        self._stats[step] = self.accumulate(self._stats.get(step), q, fp)
        self.params[step] = {k: v.float() for k, v in self.solve(self._stats[step]).items()}
        self._cache.pop(step, None)

    def finish(self, num_steps: int) -> None:
        """End of fitting: record the step count; check that ``noise_target`` had its rows."""
        if self.noise_target != "all" and not self._saw_uncond:
            raise ConfigError(f"noise_target={self.noise_target!r} needs classifier-free guidance, but the "
                              "fitting pipeline ran without it; use noise_target='all' or a guidance scale > 1")
        self.num_steps = int(num_steps)
        self._stats.clear()

    # -- applying --------------------------------------------------------------------------------
    def apply(self, pred_q: Tensor, info) -> Tensor:
        """The corrected prediction (``pred_q`` itself for steps and rows that are not corrected)."""
        step = info.step_index
        self._check_step(step, info.timestep)
        if step not in self.params or self.strength == 0.0:
            return pred_q
        grid = to_grid(pred_q, self.packed_grid)
        self._check_grid(grid, fitting=False)
        rows = self.rows(info)
        if len(rows) == grid.shape[0]:
            return from_grid(self._blend(step, grid.float()).to(grid.dtype), pred_q)
        out = grid.clone()
        out[rows] = self._blend(step, grid[rows].float()).to(grid.dtype)
        return from_grid(out, pred_q)

    def _blend(self, step: int, q: Tensor) -> Tensor:
        """``q + strength · (correct(q) − q)`` of float32 rows ``(R, C, H, W)``."""
        corrected = self.correct(step, q)
        return corrected if self.strength == 1.0 else q.lerp(corrected, self.strength)

    __call__ = apply

    def _check_step(self, step: int, timestep: float) -> None:
        if self.num_steps is not None and step >= self.num_steps:
            raise CorrectionMismatchError(f"{self.kind}: step {step} of a run longer than the {self.num_steps} "
                                          "steps it was fitted for")
        fitted = self.timesteps.get(step)
        if fitted is not None and abs(fitted - float(timestep)) > _T_TOL * max(1.0, abs(fitted)):
            raise CorrectionMismatchError(
                f"{self.kind}: step {step} runs at timestep {float(timestep):g} but was fitted at {fitted:g}; "
                f"it was fitted for {self.num_steps} steps of another schedule")

    def _check_grid(self, grid: Tensor, fitting: bool) -> None:
        shape = tuple(grid.shape[1:])
        if self.grid_shape is None and fitting:
            self.grid_shape = shape
        elif shape != self.grid_shape:
            raise CorrectionMismatchError(f"{self.kind}: latent grid {shape} (C, H, W) differs from the "
                                          f"{self.grid_shape} it was fitted on")

    # -- subclass hooks --------------------------------------------------------------------------
    def accumulate(self, stats: Any, q: Tensor, fp: Tensor) -> Any:
        """New statistics from old ``stats`` (``None`` at first) and float64 grids ``(R, C, H, W)``."""
        raise NotImplementedError

    def solve(self, stats: Any) -> dict[str, Tensor]:
        """Parameters of one step from its statistics."""
        raise NotImplementedError

    def correct(self, step: int, q: Tensor) -> Tensor:
        """Corrected float32 rows ``(R, C, H, W)`` of step ``step``."""
        raise NotImplementedError


def row_weights(fp: Tensor, alpha: float) -> Tensor:
    """Per-row loss weight ``α / n + (1 − α) / ‖ε_r‖²`` of ``fp`` ``(R, ...)``: ``Σ_r w_r ‖e_r‖²`` is
    α·MSE + (1 − α)·relative MSE summed over rows (float64 ``(R,)``)."""
    flat = fp.reshape(fp.shape[0], -1)
    return alpha / flat.shape[1] + (1.0 - alpha) / flat.pow(2).sum(1).clamp_min(1e-12)


def channel_sums(t: Tensor) -> Tensor:
    """Sum of ``(R, C, H, W)`` over rows and pixels: ``(C,)``."""
    return t.sum(dim=(0, 2, 3))


def check_alpha(alpha: float) -> float:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha={alpha}: expected a weight in [0, 1]")
    return float(alpha)
