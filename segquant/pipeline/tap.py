"""The denoiser tap: every call of a pipeline's denoiser, with where it stands, its inputs and its output.

A :class:`DenoiserTap` hooks one module of a stock diffusers pipeline (the denoiser found through
the pipeline's public attributes, a ControlNet, or any submodule) and hands each call, as a
:class:`TapCall`, to two optional handlers:

- ``before(call)``: before the module runs; sees ``call.info`` (:class:`StepInfo`) and the inputs.
  It may raise to stop the pipeline (the calibration recorder ends a trajectory this way).
- ``after(call)``: after the module ran; ``call.output`` is set. Returning a value replaces the
  module's output (return ``call.with_sample(new)`` to swap only the predicted sample); ``None``
  keeps it. The stepper and the evaluation harness's recording of the full-precision calls use this.

The step of a call comes from the pipeline's scheduler (:func:`~segquant.pipeline.steps.locate_step`),
never from counting calls. Prompt ids are the caller's: ``with tap.prompts([3, 4]): pipe(...)``
labels the rows of every call of that pipeline call.

Lockstep with a second model (the affiner: full precision vs quantized per step) runs it on the
same inputs inside ``after``::

    def after(call):
        q_out = call.run(quantized)               # same args/kwargs as the tapped call
        errors[call.info.step_index] = rel_error(output_sample(q_out), call.sample)
        return call.with_sample(correct(call.sample, call.info))

The hooks and probe are installed by ``with tap:`` (removed on exit; a tap can be entered again) or
by ``tap.install()`` until ``tap.remove()``. While installed, every call of the module is located in
the pipeline's scheduler: remove the tap before calling the module outside a pipeline run (e.g. to
calibrate it), where no step can be told (``CalibrationError``) or a stale scheduler state is read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from torch import Tensor, nn

from segquant.pipeline.glue import find_denoisers, get_denoiser, resolve_layer
from segquant.pipeline.steps import (
    CacheContextProbe,
    StepInfo,
    bind_call,
    cfg_branches,
    first_tensor,
    forward_signature,
    locate_step,
    row_prompt_ids,
    timestep_argument,
)


def output_sample(output: Any) -> Tensor:
    """The predicted sample in a denoiser output: a Tensor, the first element of a tuple/list, or the
    first field of a diffusers ``BaseOutput``/dict (e.g. ``.sample``). Raises ``TypeError`` otherwise."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and output and isinstance(next(iter(output.values())), Tensor):
        return next(iter(output.values()))
    raise TypeError(f"cannot find the predicted sample in a denoiser output of type {type(output).__name__}")


def replace_sample(output: Any, sample: Tensor) -> Any:
    """``output`` with its predicted sample (see :func:`output_sample`) replaced by ``sample``; same structure."""
    output_sample(output)  # raises for an output without a sample
    if isinstance(output, Tensor):
        return sample
    if isinstance(output, (tuple, list)):
        return type(output)([sample, *output[1:]])
    output[next(iter(output))] = sample  # diffusers BaseOutput keeps the attribute in sync
    return output


@dataclass
class TapCall:
    """One call of the tapped module.

    Attributes:
        info: where the call stands (step, timestep, guidance branch and prompt id of each row).
        args, kwargs: the arguments exactly as the pipeline passed them (``run`` replays them).
        inputs: the same call normalised to keywords by the module's forward signature (live tensors:
            copy them to keep them).
        output: the module's output (``None`` inside ``before``).
    """

    info: StepInfo
    args: tuple
    kwargs: dict[str, Any]
    inputs: dict[str, Any]
    output: Any = None

    @property
    def sample(self) -> Tensor:
        """The predicted sample of ``output`` (e.g. (B, C, H, W) for SD3/SDXL, packed (B, S, C) for FLUX)."""
        return output_sample(self.output)

    def with_sample(self, sample: Tensor) -> Any:
        """``output`` with its sample replaced (return it from ``after`` to change the pipeline's result)."""
        return replace_sample(self.output, sample)

    def run(self, model: nn.Module) -> Any:
        """Call another module (e.g. the quantized twin) on this call's exact arguments; returns its output."""
        return model(*self.args, **self.kwargs)


Handler = Callable[[TapCall], Any]


class DenoiserTap:
    """Tap on one module of ``pipe`` (see the module docstring).

    Args:
        pipe: a diffusers pipeline (anything with a ``scheduler`` and its denoiser as an attribute).
        module: component name / dotted path / module; default: the main denoiser (``transformer`` or
            ``unet``, first of ``DENOISER_NAMES``).
        before, after: the handlers (either may be ``None``).
    """

    def __init__(self, pipe: Any, module: str | nn.Module | None = None, *,
                 before: Handler | None = None, after: Handler | None = None):
        self.pipe, self.before, self.after = pipe, before, after
        self.name, self.module = get_denoiser(pipe) if module is None else resolve_layer(pipe, module)
        self._sig = forward_signature(self.module)
        probed = list(find_denoisers(pipe).values())  # an inner layer runs inside its denoiser's cache_context
        self._probe = CacheContextProbe(probed + [self.module] if self.module not in probed else probed)
        self._handles: list[Any] = []
        self._open: list[TapCall] = []  # calls whose module is running (pre-hook done, post-hook not yet)
        self._reset(())

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> "DenoiserTap":
        """Attach the hooks and the cache-context probe (no-op when installed); returns ``self``."""
        if not self._handles:
            self._handles = [self.module.register_forward_pre_hook(self._pre, with_kwargs=True),
                             self.module.register_forward_hook(self._post, with_kwargs=True)]
            self._probe.__enter__()
        return self

    def remove(self) -> None:
        """Detach everything the tap installed; the pipeline is as before (no-op when not installed)."""
        if self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._probe.__exit__(None, None, None)
            self._open.clear()

    def __enter__(self) -> "DenoiserTap":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    @contextlib.contextmanager
    def prompts(self, ids: Iterable[int]) -> Iterator["DenoiserTap"]:
        """Label the calls of the pipeline call(s) inside with the prompt ``ids`` (the pipeline call's
        prompts in order); ``call_index`` counts restart."""
        self._reset(tuple(int(i) for i in ids))
        try:
            yield self
        finally:
            self._reset(())

    def _reset(self, ids: tuple[int, ...]) -> None:
        self._ids = ids
        self._calls_per_step: dict[int, int] = {}
        self._last_step = -1
        self._open.clear()

    def _info(self, inputs: dict[str, Any]) -> StepInfo:
        step, timestep = locate_step(self.pipe.scheduler, timestep_argument(inputs), self.name)
        if step < self._last_step:  # a new pipeline call without prompts(): count calls afresh
            self._calls_per_step = {}
        self._last_step = step
        call_index = self._calls_per_step.get(step, 0)
        self._calls_per_step[step] = call_index + 1
        branches = cfg_branches(self.pipe, first_tensor(inputs), self._probe.name)
        return StepInfo(step, timestep, branches, row_prompt_ids(self._ids, branches, self.name), call_index)

    def _pre(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = bind_call(self._sig, args, kwargs, self.name)
        call = TapCall(self._info(inputs), args, kwargs, inputs)
        if self.before is not None:
            self.before(call)
        self._open.append(call)

    def _post(self, _module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> Any:
        if not self._open:  # the tap was installed while this call was running
            return None
        call = self._open.pop()
        call.output = output
        return None if self.after is None else self.after(call)


@contextlib.contextmanager
def tapping(tap: DenoiserTap | None, ids: Iterable[int]) -> Iterator[None]:
    """``tap`` installed, its calls labelled as the prompts ``ids``, inside the block; nothing when ``tap`` is None."""
    if tap is None:
        yield
        return
    with tap, tap.prompts(ids):
        yield
