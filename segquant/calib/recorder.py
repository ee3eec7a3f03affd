"""The capture hook: records a module's full calls at selected denoising steps of a running pipeline.

A forward *pre*-hook on the recorded module (the denoiser, a ControlNet, or any submodule) sees each
call's arguments before the module runs. It normalises them to keywords with the module's forward
signature, asks the pipeline which step is running (:func:`~segquant.pipeline.steps.locate_step`:
the scheduler's ``step_index``/``timesteps``, never a call counter) and, when the step is selected,
hands the call and its :class:`~segquant.calib.records.RecordInfo` to a sink. The first call of a step
after the last selected one raises a private exception that ends the trajectory early; the
recorder catches it. (Pipeline-side cleanup that runs after the loop, such as freeing offload hooks,
is skipped for such a stopped call.)
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from segquant.calib.records import RecordInfo
from segquant.errors import CalibrationError
from segquant.pipeline.glue import find_denoisers
from segquant.pipeline.steps import (
    CacheContextProbe,
    bind_call,
    cfg_branches,
    first_tensor,
    forward_signature,
    locate_step,
    timestep_argument,
)

logger = logging.getLogger(__name__)

Sink = Callable[[dict[str, Any], RecordInfo], None]


class _StopTrajectory(Exception):
    """Raised from the hook after the last selected step to end the pipeline call early."""


class Recorder:
    """Attach to ``layer`` of ``pipe`` (context manager) and record trajectories with ``run``.

    Args:
        pipe: the running diffusers pipeline (its ``scheduler`` tells the step).
        layer_name: name used in messages.
        layer: the module whose calls are recorded.
        sink: ``sink(call, info)`` for each selected call; ``call`` holds the live arguments (copy
            them to keep them).
    """

    def __init__(self, pipe: Any, layer_name: str, layer: nn.Module, sink: Sink):
        self.pipe, self.name, self.layer, self.sink = pipe, layer_name, layer, sink
        self._sig = forward_signature(layer)
        self._probe = CacheContextProbe(list(find_denoisers(pipe).values()) or [layer])
        self._handle = None
        self._reset(None, [])

    def _reset(self, prompt_id: int | None, steps: list[int]) -> None:
        self._prompt_id = prompt_id
        self._steps = set(steps)
        self._last = max(steps) if steps else -1
        self._calls: dict[int, int] = {}
        self._recorded = 0
        self._seen: set[int] = set()

    def __enter__(self) -> "Recorder":
        self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        self._probe.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._probe.__exit__(*exc)
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._prompt_id is None:  # attached but no trajectory running: pass through
            return None
        call = bind_call(self._sig, args, kwargs, self.name)
        step, timestep = locate_step(self.pipe.scheduler, timestep_argument(call), self.name)
        if step > self._last:
            raise _StopTrajectory
        call_index = self._calls.get(step, 0)
        self._calls[step] = call_index + 1
        if step in self._steps:
            branches = cfg_branches(self.pipe, first_tensor(call), self._probe.name)
            info = RecordInfo(self._prompt_id, step, timestep, branches, call_index)
            self._seen.add(step)
            self._recorded += 1
            self.sink(call, info)
        return None

    def run(self, prompt_id: int, steps: list[int], call_kwargs: dict[str, Any]) -> int:
        """Run one trajectory ``pipe(**call_kwargs)``, recording ``steps``; return the number of records.

        Raises ``CalibrationError`` when a selected step never ran (the pipeline ran fewer steps).
        """
        if self._handle is None:
            raise RuntimeError("Recorder.run needs the recorder attached: use 'with Recorder(...) as rec'")
        self._reset(prompt_id, sorted(steps))
        try:
            with torch.no_grad():
                self.pipe(**call_kwargs)
        except _StopTrajectory:
            pass
        finally:
            recorded, seen = self._recorded, set(self._seen)
            self._reset(None, [])
        missing = sorted(set(steps) - seen)
        if missing:
            raise CalibrationError(
                f"prompt {prompt_id}: {self.name} was never called at step(s) {missing}; the pipeline "
                f"{type(self.pipe).__name__} ran fewer steps than the sampler's max_timestep"
            )
        return recorded
