"""The ``stepper`` hook point: a per-step correction of the denoiser output on a stock pipeline.

A *stepper* is any callable ``stepper(output, info) -> output`` where ``output`` is the denoiser's
prediction for the whole batch (SD3/SDXL: (B, C, H, W); FLUX: packed (B, S, C); same dtype and
device as the model output) and ``info`` is a :class:`~segquant.pipeline.steps.StepInfo`
(``step_index``, ``timestep``, per-row guidance ``branches``) read from the running pipeline. It must
return a tensor of the same shape. The affiner (``ε' = K_t ⊙ ε̂ + b_t``) is such a callable, keyed
by ``info.step_index`` or ``info.timestep``.

:func:`install_stepper` attaches it with a forward hook on the denoiser, so the diffusers pipeline
itself is untouched (no forked pipelines) and removing the hook restores it exactly. The hook sees
both guidance branches of a batched CFG call; an affine map applied to both gives the same result as
applying it after the guidance combination ``u + g (c - u)``, since the weights sum to one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import Tensor, nn

from segquant.pipeline.glue import get_denoiser, resolve_layer
from segquant.pipeline.steps import (
    CacheContextProbe,
    StepInfo,
    bind_call,
    cfg_branches,
    first_tensor,
    forward_signature,
    locate_step,
    timestep_argument,
)

Stepper = Callable[[Tensor, StepInfo], Tensor]


def _apply_to_sample(output: Any, fn: Callable[[Tensor], Tensor], owner: str) -> Any:
    """Apply ``fn`` to the sample in a denoiser output (a Tensor, a tuple ``(sample, ...)`` or a
    diffusers ``BaseOutput``/dict whose first field is the sample) and return the same structure."""
    if isinstance(output, Tensor):
        return fn(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return type(output)([fn(output[0]), *output[1:]])
    if isinstance(output, dict) and output:
        key = next(iter(output))
        if isinstance(output[key], Tensor):
            output[key] = fn(output[key])  # diffusers BaseOutput keeps the attribute in sync
            return output
    raise TypeError(f"stepper on {owner}: cannot find the predicted sample in an output of type {type(output).__name__}")


def _checked(stepper: Stepper, info: StepInfo, owner: str) -> Callable[[Tensor], Tensor]:
    def run(sample: Tensor) -> Tensor:
        new = stepper(sample, info)
        if not isinstance(new, Tensor) or new.shape != sample.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(f"stepper on {owner} returned {got}; expected a tensor of shape {tuple(sample.shape)}")
        return new

    return run


@contextlib.contextmanager
def install_stepper(pipe: Any, stepper: Stepper, denoiser: str | nn.Module | None = None) -> Iterator[Any]:
    """Context manager: run ``stepper`` on every output of ``pipe``'s denoiser while inside.

    Args:
        pipe: a diffusers pipeline (anything with a ``scheduler`` and the denoiser as an attribute).
        stepper: ``stepper(output, info) -> output``, see the module docstring.
        denoiser: component name / dotted path / module; default: the main denoiser (``transformer``
            or ``unet``).
    Yields:
        ``pipe``.
    """
    name, module = get_denoiser(pipe) if denoiser is None else resolve_layer(pipe, denoiser)
    sig = forward_signature(module)
    probe = CacheContextProbe([module])

    def hook(_mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        call = bind_call(sig, args, kwargs, name)
        step, timestep = locate_step(pipe.scheduler, timestep_argument(call), name)
        info = StepInfo(step, timestep, cfg_branches(pipe, first_tensor(call), probe.name))
        return _apply_to_sample(output, _checked(stepper, info, name), name)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with probe:
            yield pipe
    finally:
        handle.remove()
