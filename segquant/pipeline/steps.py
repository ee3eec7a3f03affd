"""Where is the pipeline? The denoising step and guidance branch of one denoiser call, read from the pipeline.

Nothing here counts calls. The **step** of a call comes from the pipeline's scheduler: its
``step_index`` (the index into ``scheduler.timesteps`` of the step being computed, ``None`` before the
first ``scheduler.step``, then ``begin_index`` or 0) cross-checked against the call's own timestep
argument; schedulers without ``step_index`` (e.g. DDIM) are located by matching the timestep argument
against ``scheduler.timesteps``. Step indices are relative to the pipeline's loop (``0`` = first step
run, also for img2img pipelines that start at ``begin_index``) and timesteps are on the scheduler's
scale (FLUX passes ``t / 1000`` to its transformer; the recorded timestep is ``t``).

The **classifier-free-guidance branch** of each batch row: diffusers pipelines that guide in one call
(SD3, SDXL, PixArt, ...) run ``cat([latents] * 2)`` with the unconditional half first, so when the
pipeline reports ``do_classifier_free_guidance`` and the two halves of the main input are identical,
rows are ``("uncond",) * n + ("cond",) * n``. Otherwise all rows belong to one branch: the name of
the pipeline's active ``cache_context`` (FLUX true-CFG runs ``"cond"`` and ``"uncond"`` as separate
calls, each inside ``transformer.cache_context(name)``) or ``"cond"`` when there is none.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from segquant.errors import CalibrationError

TIMESTEP_ARG_NAMES: tuple[str, ...] = ("timestep", "timesteps", "t", "current_timestep")
# FLUX-style pipelines divide the scheduler's timestep by 1000 before the denoiser call.
_TIMESTEP_SCALES: tuple[float, ...] = (1.0, 1000.0)
_REL_TOL = 1e-2  # bf16 timesteps are only ~3 significant digits
_MISSING = object()


@dataclass(frozen=True)
class StepInfo:
    """Position of one denoiser call in a running pipeline.

    Attributes:
        step_index: denoising step of the pipeline loop, 0 = first (noisiest) step run.
        timestep: the scheduler's timestep of that step (float; FLUX: the scheduler scale, not t/1000).
        branches: guidance branch of each batch row of the call: "cond" or "uncond".
        prompt_ids: prompt (trajectory) id of each batch row, from the ids the caller gave for the
            pipeline call (``DenoiserTap.prompts``); ``()`` when none were given.
        call_index: order of this call among the tapped module's calls in the same step (0 first;
            FLUX true CFG calls the transformer twice per step).
    """

    step_index: int
    timestep: float
    branches: tuple[str, ...]
    prompt_ids: tuple[int, ...] = ()
    call_index: int = 0

    @property
    def rows(self) -> int:
        """Batch rows of the call."""
        return len(self.branches)

    @property
    def prompt_id(self) -> int | None:
        """The prompt id shared by every row, or ``None`` (no ids given, or rows of several prompts)."""
        ids = set(self.prompt_ids)
        return next(iter(ids)) if len(ids) == 1 else None


def row_prompt_ids(ids: tuple[int, ...], branches: tuple[str, ...], owner: str = "denoiser") -> tuple[int, ...]:
    """Prompt id of each batch row, given the ids of the pipeline call's prompts in order.

    Rows come in one block per guidance branch (``branches``); inside a block, diffusers repeats each
    prompt ``num_images_per_prompt`` times in a row, so a block of ``n`` rows holds each id
    ``n / len(ids)`` times. Raises ``CalibrationError`` when a block size is not a multiple of ``len(ids)``.
    """
    if not ids:
        return ()
    out: list[int] = []
    start = 0
    while start < len(branches):
        end = start
        while end < len(branches) and branches[end] == branches[start]:
            end += 1
        if (end - start) % len(ids):
            raise CalibrationError(
                f"{owner}: a call with {end - start} {branches[start]!r} rows cannot hold the {len(ids)} prompts "
                "given for this pipeline call"
            )
        out += [i for i in ids for _ in range((end - start) // len(ids))]
        start = end
    return tuple(out)


def forward_signature(module: nn.Module) -> inspect.Signature:
    """Signature of ``module``'s class ``forward`` without ``self`` (robust to patched instance forwards)."""
    base = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    sig = inspect.signature(type(base).forward)
    params = list(sig.parameters.values())[1:]
    return sig.replace(parameters=params)


def bind_call(sig: inspect.Signature, args: tuple, kwargs: dict, owner: str = "module") -> dict[str, Any]:
    """Normalise a call to keyword arguments by the forward signature (only the arguments passed).

    ``**kwargs`` of the forward are flattened into the result. Raises ``CalibrationError`` when the
    call does not fit the signature or uses ``*args`` (which cannot be replayed as keywords).
    """
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise CalibrationError(f"the call of {owner} does not match its forward signature {sig}: {exc}") from None
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise CalibrationError(f"{owner} was called with extra positional arguments (*{name}); cannot record")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def first_tensor(tree: Any) -> Tensor | None:
    """The first tensor in a nested dict/list/tuple, depth first, in insertion order (or ``None``)."""
    if isinstance(tree, Tensor):
        return tree
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def timestep_argument(call: dict[str, Any]) -> float | None:
    """The first element of the call's timestep argument (``TIMESTEP_ARG_NAMES``), as a float, or None."""
    for name in TIMESTEP_ARG_NAMES:
        value = call.get(name)
        if isinstance(value, Tensor) and value.numel() > 0:
            return float(value.reshape(-1)[0].item())
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _matches(reference: float, value: float) -> bool:
    return any(abs(reference - value * s) <= _REL_TOL * max(1.0, abs(reference)) for s in _TIMESTEP_SCALES)


def _nearest_step(timesteps: Tensor, value: float, owner: str) -> int:
    ts = timesteps.detach().double().cpu()
    dist = torch.stack([(ts - value * s).abs() / ts.abs().clamp(min=1.0) for s in _TIMESTEP_SCALES]).amin(0)
    order = torch.argsort(dist)
    best = int(order[0])
    if float(dist[best]) > _REL_TOL:
        raise CalibrationError(f"{owner}: timestep argument {value} matches none of the scheduler's timesteps")
    if len(order) > 1 and float(dist[order[1]]) == float(dist[best]):
        raise CalibrationError(
            f"{owner}: timestep argument {value} matches several scheduler timesteps; the scheduler has no "
            "step_index to tell them apart"
        )
    return best


def locate_step(scheduler: Any, t_value: float | None, owner: str = "denoiser") -> tuple[int, float]:
    """``(step_index, timestep)`` of the current denoiser call, from the pipeline's scheduler.

    Args:
        scheduler: the pipeline's scheduler (``timesteps`` set by the running pipeline).
        t_value: the call's timestep argument (see ``timestep_argument``) or ``None``.
    """
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        raise CalibrationError(f"{owner}: the pipeline's scheduler has no timesteps; is a pipeline running?")
    begin = getattr(scheduler, "begin_index", None) or 0
    idx = getattr(scheduler, "step_index", None) if hasattr(type(scheduler), "step_index") else None
    if idx is None and hasattr(type(scheduler), "step_index"):
        idx = begin
    if idx is not None and 0 <= idx < len(timesteps):
        t_ref = float(timesteps[idx])
        if t_value is None or _matches(t_ref, t_value):
            return int(idx) - begin, t_ref
    if t_value is None:
        raise CalibrationError(
            f"{owner}: cannot tell the denoising step: the call has no timestep argument "
            f"({', '.join(TIMESTEP_ARG_NAMES)}) and the scheduler {type(scheduler).__name__} has no step_index"
        )
    j = _nearest_step(torch.as_tensor(timesteps), t_value, owner)
    return j - begin, float(timesteps[j])


def pipeline_does_cfg(pipe: Any) -> bool:
    """The pipeline's own ``do_classifier_free_guidance`` (False when it has none or it cannot be read)."""
    try:
        return bool(getattr(pipe, "do_classifier_free_guidance"))
    except Exception:  # property reads attributes that exist only during a call
        return False


def cfg_branches(pipe: Any, main_input: Tensor | None, context_name: str | None) -> tuple[str, ...]:
    """Guidance branch of each batch row of a call whose main input (first tensor) is ``main_input``."""
    rows = int(main_input.shape[0]) if isinstance(main_input, Tensor) and main_input.ndim > 0 else 1
    if pipeline_does_cfg(pipe) and rows % 2 == 0 and isinstance(main_input, Tensor):
        half = rows // 2
        if torch.equal(main_input[:half], main_input[half:]):
            return ("uncond",) * half + ("cond",) * half
    label = context_name if context_name in ("cond", "uncond") else "cond"
    return (label,) * rows


class CacheContextProbe:
    """Reads the name of the active ``cache_context`` of the pipeline components that have one.

    Wraps the ``cache_context`` method on the *instances* (restored on exit); the wrapper only
    remembers the name and delegates, so the pipeline runs unchanged.
    """

    def __init__(self, modules: list[nn.Module]):
        self._modules = [m for m in modules if callable(getattr(m, "cache_context", None))]
        self.name: str | None = None

    def _wrap(self, original):
        @contextlib.contextmanager
        def cache_context(name: str, *args: Any, **kwargs: Any) -> Iterator[None]:
            previous, self.name = self.name, name
            try:
                with original(name, *args, **kwargs):
                    yield
            finally:
                self.name = previous

        return cache_context

    def __enter__(self) -> "CacheContextProbe":
        self._saved = [(m, m.__dict__.get("cache_context", _MISSING)) for m in self._modules]
        for module in self._modules:
            object.__setattr__(module, "cache_context", self._wrap(module.cache_context))
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, saved in self._saved:  # restore an instance attribute the module had before
            if saved is _MISSING:
                module.__dict__.pop("cache_context", None)
            else:
                object.__setattr__(module, "cache_context", saved)
        self.name = None
