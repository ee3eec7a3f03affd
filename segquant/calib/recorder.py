"""The capture hook: records a module's full calls at selected denoising steps of a running pipeline.

A :class:`~segquant.pipeline.tap.DenoiserTap` on the recorded module (the denoiser, a ControlNet, or
any submodule) hands each call, before the module runs, with its keyword-normalised inputs and its
:class:`~segquant.pipeline.steps.StepInfo` (step from the scheduler, never a call counter). When the
step is selected, the call goes to a sink. The first call of a step after the last selected one
raises a private exception that ends the trajectory early; the recorder catches it. (Pipeline-side
cleanup that runs after the loop, such as freeing offload hooks, is skipped for such a stopped call.)
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from segquant.errors import CalibrationError
from segquant.pipeline.steps import StepInfo
from segquant.pipeline.tap import DenoiserTap, TapCall

logger = logging.getLogger(__name__)

Sink = Callable[[dict[str, Any], StepInfo], None]


class _StopTrajectory(Exception):
    """Raised from the tap after the last selected step to end the pipeline call early."""


class Recorder:
    """Attach to ``layer`` of ``pipe`` (context manager) and record trajectories with ``run``.

    Args:
        pipe: the running diffusers pipeline (its ``scheduler`` tells the step).
        layer: the module whose calls are recorded (an object, component name or dotted path).
        sink: ``sink(call, info)`` for each selected call; ``call`` holds the live arguments (copy
            them to keep them).
    """

    def __init__(self, pipe: Any, layer: str | nn.Module, sink: Sink):
        self.pipe, self.sink = pipe, sink
        self.tap = DenoiserTap(pipe, layer, before=self._before)
        self._steps: set[int] = set()
        self._last: int | None = None  # last selected step of the running trajectory; None: none running
        self._seen: list[int] = []

    def __enter__(self) -> "Recorder":
        self.tap.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tap.remove()

    def _before(self, call: TapCall) -> None:
        step = call.info.step_index
        if self._last is None:  # attached but no trajectory running: pass through
            return
        if step > self._last:
            raise _StopTrajectory
        if step in self._steps:
            self._seen.append(step)
            self.sink(call.inputs, call.info)

    def run(self, prompt_id: int, steps: list[int], call_kwargs: dict[str, Any]) -> int:
        """Run one trajectory ``pipe(**call_kwargs)``, recording ``steps``; return the number of records.

        Raises ``CalibrationError`` when a selected step never ran (the pipeline ran fewer steps).
        """
        if not self.tap.installed:
            raise RuntimeError("Recorder.run needs the recorder attached: use 'with Recorder(...) as rec'")
        self._steps, self._last, self._seen = set(steps), max(steps, default=-1), []
        try:
            with torch.no_grad(), self.tap.prompts([prompt_id]):
                self.pipe(**call_kwargs)
        except _StopTrajectory:
            pass
        finally:
            seen, self._steps, self._last = self._seen, set(), None
        missing = sorted(set(steps) - set(seen))
        if missing:
            raise CalibrationError(
                f"prompt {prompt_id}: {self.tap.name} was never called at step(s) {missing}; the pipeline "
                f"{type(self.pipe).__name__} ran fewer steps than the sampler's max_timestep"
            )
        return len(seen)
