"""The ``stepper`` hook point: a per-step correction of the denoiser output on a stock pipeline.

A *stepper* is any callable ``stepper(output, info) -> output`` where ``output`` is the denoiser's
prediction for the whole batch (SD3/SDXL: (B, C, H, W); FLUX: packed (B, S, C); same dtype and
device as the model output) and ``info`` is a :class:`~segquant.pipeline.steps.StepInfo`
(``step_index``, ``timestep``, per-row guidance ``branches``) read from the running pipeline. It must
return a tensor of the same shape. The affiner (``ε' = K_t ⊙ ε̂ + b_t``) is such a callable, keyed
by ``info.step_index`` or ``info.timestep``.

:func:`install_stepper` attaches it through a :class:`~segquant.pipeline.tap.DenoiserTap`, so the
diffusers pipeline itself is untouched (no forked pipelines) and removing it restores the pipeline
exactly. The tap sees both guidance branches of a batched CFG call; an affine map applied to both
gives the same result as applying it after the guidance combination ``u + g (c - u)``, since the
weights sum to one.

    handle = install_stepper(pipe, fn)     # installed now, until handle.remove() / remove_stepper(pipe)
    with install_stepper(pipe, fn):        # or only inside the block
        pipe(...)
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

from torch import Tensor, nn

from segquant.pipeline.steps import StepInfo
from segquant.pipeline.tap import DenoiserTap, TapCall

Stepper = Callable[[Tensor, StepInfo], Tensor]

# Steppers installed on each pipeline (for remove_stepper); weak keys: a dropped pipeline is forgotten.
_INSTALLED: "weakref.WeakKeyDictionary[Any, list[DenoiserTap]]" = weakref.WeakKeyDictionary()


def _apply(stepper: Stepper, owner: str) -> Callable[[TapCall], Any]:
    def after(call: TapCall) -> Any:
        sample = call.sample
        new = stepper(sample, call.info)
        if not isinstance(new, Tensor) or new.shape != sample.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(f"stepper on {owner} returned {got}; expected a tensor of shape {tuple(sample.shape)}")
        return call.with_sample(new)

    return after


class _StepperTap(DenoiserTap):
    """A tap that forgets itself in ``_INSTALLED`` when removed."""

    def remove(self) -> None:
        super().remove()
        taps = _INSTALLED.get(self.pipe, [])
        if self in taps:
            taps.remove(self)


def install_stepper(pipe: Any, stepper: Stepper, denoiser: str | nn.Module | None = None) -> DenoiserTap:
    """Run ``stepper`` on every output of ``pipe``'s denoiser, from now until removed.

    Args:
        pipe: a diffusers pipeline (anything with a ``scheduler`` and the denoiser as an attribute).
        stepper: ``stepper(output, info) -> output``, see the module docstring.
        denoiser: component name / dotted path / module; default: the main denoiser (``transformer``
            or ``unet``).
    Returns:
        The installed tap: call ``.remove()`` (or :func:`remove_stepper`) to detach it, or use the call
        as a context manager (``with install_stepper(pipe, fn): ...``), which detaches it on exit.
    """
    if not callable(stepper):
        raise TypeError(f"install_stepper: stepper must be callable(output, info), got {type(stepper).__name__}")
    tap = _StepperTap(pipe, denoiser)
    tap.after = _apply(stepper, tap.name)
    _INSTALLED.setdefault(pipe, []).append(tap.install())
    return tap


def remove_stepper(pipe: Any) -> int:
    """Detach every stepper installed on ``pipe`` with :func:`install_stepper`; returns how many."""
    taps = list(_INSTALLED.get(pipe, []))
    for tap in reversed(taps):
        tap.remove()
    return len(taps)
