"""Putting a correction on a pipeline: the stepper, or the correction's own ``install`` (TAC's input hook)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from torch import Tensor

from segquant.pipeline.glue import get_denoiser
from segquant.pipeline.steps import bind_call, forward_signature, locate_step, timestep_argument


@contextlib.contextmanager
def input_hook(pipe: Any, fn: Callable[[Tensor, int], Tensor]) -> Iterator[None]:
    """Replace the denoiser's main input (its first forward argument, e.g. ``hidden_states`` /
    ``sample``) by ``fn(x, step_index)`` on every call inside the block; the step comes from the
    pipeline's scheduler (:func:`~segquant.pipeline.steps.locate_step`)."""
    name, module = get_denoiser(pipe)
    sig = forward_signature(module)
    first = next(iter(sig.parameters))

    def pre(_module, args: tuple, kwargs: dict):
        inputs = bind_call(sig, args, kwargs, name)
        step, _ = locate_step(pipe.scheduler, timestep_argument(inputs), name)
        if args:
            return (fn(args[0], step), *args[1:]), kwargs
        return args, {**kwargs, first: fn(kwargs[first], step)}

    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def installed(pipe: Any, correction: Any) -> contextlib.AbstractContextManager:
    """Context manager applying ``correction`` on ``pipe``: its ``install(pipe)`` when it has one,
    else ``install_stepper(pipe, correction)``; ``None`` applies nothing."""
    from segquant.pipeline.stepper import install_stepper

    if correction is None:
        return contextlib.nullcontext()
    if callable(getattr(correction, "install", None)):
        return correction.install(pipe)
    return install_stepper(pipe, correction)
