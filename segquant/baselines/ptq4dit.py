"""PTQ4DiT (Wu et al., NeurIPS 2024): channel-wise salience balancing with timestep-aware salience.

Salience of input channel ``j``: ``s(X_j) = max |X_j|`` over the tokens of the activation ``X`` ``(tokens, K)``,
``s(W_j) = max |W_:,j|`` over the rows of the weight ``W`` ``(N, K)``. Extreme values in activations and
weights rarely share a channel, so a diagonal balancing ``X̃ = X B``, ``W̃ = B⁻¹ W`` with
``B_j = sqrt(s(X_j) s(W_j)) / s(X_j)`` (CSB) gives both the geometric mean of the two saliences, never
more than the larger one. Activation salience drifts over the denoising timesteps, so the salience that
``B`` balances is a mix over the calibration timesteps (SSC, Spearman's-ρ-based salience calibration):
``s_ρ(X_j) = Σ_t η_t s(X_j^(t))`` with ``η_t = softmax_t(−ρ_t)``, ``ρ_t`` the Spearman rank correlation
between ``s(X^(t))`` and ``s(W)`` over the channels: timesteps whose activation salience is *least*
correlated with the weight's (where balancing helps most) weigh most.

CSB is SmoothQuant with alpha 0.5 (``λ_j = sqrt(s(X_j) / s(W_j)) = 1 / B_j``), so the conversion is
segquant's own; this module supplies ``s_ρ(X)`` in place of the all-timestep abs-max. The balancing of
each layer is folded into its own ``SegLinear`` (the paper folds it into the preceding adaLN / linear:
the same numerics).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from segquant.algorithms.smoothquant import smooth_factors
from segquant.calibration import batch_shapes, run_batch
from segquant.errors import CalibrationError
from segquant.pipeline.steps import TIMESTEP_ARG_NAMES

logger = logging.getLogger(__name__)


def channel_salience(x: Tensor) -> Tensor:
    """``s(X_j) = max|X_j|``: float32 ``(K,)`` for an activation ``(..., K)`` or a weight's columns."""
    return x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()


def balance(x_salience: Tensor, weight: Tensor) -> Tensor:
    """CSB's balancing vector ``B`` ``(K,)`` for activation salience ``x_salience`` ``(K,)`` and ``weight``
    ``(N, K)``: ``sqrt(s(X) s(W)) / s(X)``, i.e. ``1 / λ`` of SmoothQuant at alpha 0.5."""
    return 1.0 / smooth_factors(x_salience, weight, 0.5)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of two ``(K,)`` vectors (float32 scalar; ties broken by order)."""
    ra = a.float().argsort().argsort().float()
    rb = b.float().argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12)


def timestep_salience(per_step: Tensor, w_salience: Tensor) -> tuple[Tensor, Tensor]:
    """SSC: ``(s_ρ(X) (K,), η (T,))`` from the per-timestep activation saliences ``per_step`` ``(T, K)``
    and the weight salience ``w_salience`` ``(K,)``: ``η = softmax(−ρ)``, ``s_ρ = Σ_t η_t s(X^(t))``."""
    rho = torch.stack([spearman(row, w_salience) for row in per_step])
    eta = torch.softmax(-rho, dim=0)
    return (eta[:, None] * per_step.float()).sum(0), eta


class StepSalience:
    """Per-timestep channel abs-max of one layer's input: ``steps[t]`` float32 ``(K,)``."""

    def __init__(self) -> None:
        self.steps: dict[float, Tensor] = {}

    def update(self, x: Tensor, timesteps: Tensor) -> None:
        """``x`` ``(B, ..., K)`` the layer input of a batch whose samples have ``timesteps`` ``(B,)``; when
        ``x``'s leading dim is not the batch, every timestep of the batch gets the whole batch's salience."""
        k = x.shape[-1]
        if x.shape[0] == timesteps.numel():
            per_sample = x.detach().abs().reshape(x.shape[0], -1, k).amax(1).float()
        else:
            per_sample = channel_salience(x).expand(timesteps.numel(), k)
        for t in torch.unique(timesteps):
            row = per_sample[timesteps == t].amax(0)
            key = float(t)
            self.steps[key] = torch.maximum(self.steps[key], row) if key in self.steps else row

    def table(self) -> Tensor:
        """``(T, K)``, timesteps in increasing order."""
        return torch.stack([self.steps[t] for t in sorted(self.steps)])


def batch_timesteps(batch: Any) -> Tensor:
    """The per-sample timesteps ``(B,)`` of a keyword calibration batch (``TIMESTEP_ARG_NAMES``)."""
    if isinstance(batch, dict):
        for key in TIMESTEP_ARG_NAMES:
            if isinstance(batch.get(key), Tensor):
                return batch[key].detach().float().reshape(-1).cpu()
    raise CalibrationError(f"PTQ4DiT needs keyword calibration batches with a timestep argument "
                           f"({', '.join(TIMESTEP_ARG_NAMES)}); got {batch_shapes(batch)}")


def collect_step_salience(model: nn.Module, names: list[str], loader: Any) -> dict[str, StepSalience]:
    """Run ``model`` over ``loader``; per layer in ``names``, its input salience per timestep."""
    stats = {name: StepSalience() for name in names}
    state: dict[str, Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            stats[name].update(args[0].cpu(), state["t"])
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in loader:
                state["t"] = batch_timesteps(batch)
                run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return stats


class SalienceObserver:
    """An :class:`~segquant.observers.InputObserver` whose ``absmax`` (what smoothing balances) is the
    SSC salience ``s_ρ(X)``; every other statistic (input range, samples, Hessian) is the observer's."""

    def __init__(self, observer: Any, salience: Tensor):
        self._observer, self._salience = observer, salience

    @property
    def absmax(self) -> Tensor:
        return self._salience.to(self._observer.max.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._observer, name)


def ptq4dit_quantize(model: nn.Module, loader: Any, config: dict) -> nn.Module:
    """Quantize ``model`` in place with ``config`` (smoothing alpha 0.5 = CSB), the smoothing salience of each
    layer replaced by its SSC salience over the calibration timesteps; returns ``model``."""
    from segquant.calibration import calibrate, split_first_batch
    from segquant.conversion import convert
    from segquant.plan import build_plan

    example, loader = split_first_batch(loader)
    plan = build_plan(model, config, example)
    model.eval()
    names = [layer.name for layer in plan.enabled_layers()]
    steps = collect_step_salience(model, names, loader)
    observers = calibrate(model, plan, loader)
    for name in names:
        w_sal = channel_salience(model.get_submodule(name).weight)
        salience, eta = timestep_salience(steps[name].table(), w_sal)
        logger.debug("%s: SSC weights %s", name, [round(float(e), 3) for e in eta])
        observers[name] = SalienceObserver(observers[name], salience)
    convert(model, plan, observers)
    model.segquant_plan = plan
    return model


def transformer_only(model: nn.Module) -> str | None:
    """PTQ4DiT's scope: diffusion transformers (a UNet has no DiT blocks; the paper does not define it there)."""
    if "UNet" in type(model).__name__:
        return f"PTQ4DiT is defined for diffusion transformers, not {type(model).__name__}"
    return None
