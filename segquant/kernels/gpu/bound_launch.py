"""Triton launches replayed without ``JITFunction.run``: the host cost of a kernel call without CUDA graphs.

Each call of a ``@triton.jit`` kernel (``kernel[grid](*args)``) binds and specializes every argument, computes a
cache key, looks up the compiled kernel, runs the autotuner's and heuristics' wrappers and only then launches: on an
H100 49–92 µs per call once the autotuner is skipped (BENCHMARKS.md run 20), three to six times a cuBLAS call's whole
host time. :func:`launch` makes the first call of each *launch key* through Triton, records the compiled kernel, the
grid and every parameter's value (constexprs and the autotuner's choice included), and launches later calls of that
key directly on the compiled kernel's launcher with the new tensors in place.

The launch key is finer than Triton's own specialization, so a replayed launch is one Triton would make the same way:
per current device (Triton compiles and launches for that one), each tensor by dtype and whether its address is
16-byte aligned (what Triton specializes pointers on), every int, bool, string and dtype by its exact value (Triton
specializes ints on ``== 1`` and on divisibility by 16), positional floats by their type, keyword floats by their
value (a replay passes the first launch's keywords), host-side TMA descriptors by their tensor's key, shape, strides
and block shape. The config an autotuner chose keeps its pre-hook, run before each replayed launch as the autotuner
runs it. A call whose arguments hold anything else, or with a launch hook set (a profiler), takes Triton's own path,
and so does every call under a Triton whose launch protocol (the compiled kernel's ``run`` arguments) this module was
not written against (:data:`READ_TRITON`).

On by default (``SEGQUANT_BOUND_LAUNCH=0`` in the environment, or ``BOUND_LAUNCH["enabled"] = False``, turns it off):
on an H100 the forward without a CUDA graph took 165 against 268 ms (FLUX.1-dev, INT8) and 61 against 109 ms
(SD3.5-medium, ``w8a8_fp8``); the GPU tests found each replayed kernel's output bitwise that of Triton's own launch
(BENCHMARKS.md, run 22).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

#: Whether :func:`launch` replays launches (else every call is ``kernel[grid](*args, **kwargs)``).
BOUND_LAUNCH = {"enabled": os.environ.get("SEGQUANT_BOUND_LAUNCH", "1") != "0"}
#: The Triton versions (major, minor) whose ``JITFunction.run`` launches as the replay does, read in their source:
#: 3.6 (run on the GPU, run 22) to 3.9. Under any other version every launch goes through Triton.
READ_TRITON = ((3, 6), (3, 9))
#: The launch-key value of an argument no launch can be bound with.
_UNBOUND_ARGUMENT = object()
#: Argument types keyed by their value (exact, finer than Triton's specialization of ints).
_VALUE_KEYED = frozenset({bool, int, str, torch.dtype, type(None)})


@dataclass(frozen=True)
class BoundLaunch:
    """What a replayed launch needs: the compiled kernel, its grid ``(x, y, z)``, the kernel's parameter names in
    signature order, the values at the first launch of those after the call's positional arguments (keyed by value:
    keywords, defaults, constexprs, the autotuner's choice; the positional ones are each launch's own, so the first
    launch's tensors are not kept alive), and the pre-hook of the config an autotuner chose (run on each launch's
    parameters, as the autotuner runs it: the TMA kernel's sets its descriptors' block shapes)."""

    compiled: Any
    grid: tuple[int, int, int]
    names: tuple[str, ...]
    trailing: tuple
    pre_hook: Callable[[dict], None] | None


def launch_key(args: tuple, kwargs: dict) -> tuple | None:
    """The key under which a launch of ``args`` / ``kwargs`` is bound (module doc), or None if one of them cannot be
    keyed. Built in one comprehension: it is paid on every call (a few µs for the op's ~40 arguments)."""
    key = tuple([(value.dtype, not value.data_ptr() & 15) if type(value) is torch.Tensor
                 else value if type(value) in _VALUE_KEYED else _other_key(value) for value in args])
    return None if _UNBOUND_ARGUMENT in key else (key, tuple(kwargs.items()), tuple(map(type, kwargs.values())))


def _other_key(value: Any) -> Any:
    """The key of a positional argument that is neither a plain tensor nor keyed by value: a float by its type (the
    launch passes each call's), a tensor subclass as a tensor, a host-side TMA descriptor by its tensor's key, shape,
    strides, block shape and padding; anything else cannot be keyed."""
    if isinstance(value, float):
        return float
    if isinstance(value, torch.Tensor):
        return value.dtype, not value.data_ptr() & 15
    if hasattr(value, "block_shape") and hasattr(value, "base"):
        return (_other_key(value.base), tuple(value.shape), tuple(value.strides), tuple(value.block_shape),
                value.padding)
    return _UNBOUND_ARGUMENT


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` (``kernel`` a Triton kernel, autotuned or not; ``grid`` a tuple or a function
    of the launch's parameters, as Triton takes it), replaying the first launch of each launch key (module doc) where
    :data:`BOUND_LAUNCH` is on. Keyword arguments are keyed by value, so tensors go positionally."""
    if not BOUND_LAUNCH["enabled"]:  # switched off: nothing added to Triton's own launch
        kernel[grid](*args, **kwargs)
        return
    from triton import knobs

    key = launch_key(args, kwargs)
    if key is None or _hook_set(knobs.runtime.launch_enter_hook) or _hook_set(knobs.runtime.launch_exit_hook):
        kernel[grid](*args, **kwargs)
        return
    device = _current_device()
    if device is None:  # no CUDA in use: Triton's interpreter runs the kernel
        kernel[grid](*args, **kwargs)
        return
    launches = _BOUND.setdefault((kernel, device), {})
    if key not in launches:
        launches[key] = _first_launch(kernel, grid, args, kwargs)
        return
    bound = launches[key]
    if bound is None:  # Triton made no kernel to bind (the interpreter), or launches otherwise (another version)
        kernel[grid](*args, **kwargs)
        return
    values = (*args, *bound.trailing)
    if bound.pre_hook is not None:
        bound.pre_hook(dict(zip(bound.names, values)))
    compiled = bound.compiled
    compiled.run(*bound.grid, _current_stream(device), compiled.function, compiled.packed_metadata, None, None, None,
                 *values)


def clear_bound_launches() -> None:
    """Forget every bound launch (after changing a kernel's configs, say)."""
    _BOUND.clear()


def _first_launch(kernel, grid, args: tuple, kwargs: dict) -> BoundLaunch | None:
    """Launch through Triton, recording the parameters the last grid evaluation saw (the launch itself, after any
    autotuning); the binding, or None where Triton returns no compiled kernel or is not a version of
    :data:`READ_TRITON`. A keyword argument that is a tensor is refused: keywords are keyed by value, and a replay
    passes the first launch's."""
    if any(isinstance(value, torch.Tensor) for value in kwargs.values()):
        raise TypeError(f"{kernel}: pass tensors positionally to a bound launch (keywords are keyed by value)")
    if not triton_read():
        kernel[grid](*args, **kwargs)
        return None
    seen: dict[str, dict] = {}

    def recording_grid(meta: dict) -> tuple:
        seen["meta"] = dict(meta)
        return grid(meta) if callable(grid) else grid

    compiled = kernel[recording_grid](*args, **kwargs)
    if compiled is None or not hasattr(compiled, "packed_metadata") or "meta" not in seen:
        return None
    meta, config = seen["meta"], _chosen_config(kernel)
    size = tuple(grid(meta) if callable(grid) else grid)
    return BoundLaunch(compiled, size + (1,) * (3 - len(size)), tuple(meta), tuple(meta.values())[len(args):],
                       None if config is None else config.pre_hook)


def triton_read(version: str | None = None) -> bool:
    """Whether Triton's ``version`` (by default the installed one) is one of :data:`READ_TRITON`."""
    if version is None:
        import triton

        version = triton.__version__
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    return READ_TRITON[0] <= major_minor <= READ_TRITON[1]


def _hook_set(hook) -> bool:
    """Whether a launch hook of Triton's is set: not None (Triton 3.6), a chain with calls in it (later versions)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _chosen_config(kernel):
    """The config the autotuner among ``kernel``'s wrappers chose for its last launch, or None without one."""
    while kernel is not None and not hasattr(kernel, "best_config"):
        kernel = getattr(kernel, "fn", None)
    return None if kernel is None else kernel.best_config


def _current_device() -> int | None:
    """The current CUDA device, the one Triton compiles for and launches on; None while CUDA is not initialized (no
    CUDA tensor exists: Triton's interpreter runs the kernels on CPU tensors)."""
    return torch.cuda.current_device() if torch.cuda.is_initialized() else None


def _current_stream(device: int) -> int:
    """The raw current CUDA stream of ``device``, the one Triton launches on."""
    return torch._C._cuda_getCurrentRawStream(device)


#: Bound launches per kernel and current device, per launch key (None: not bindable).
_BOUND: dict = {}
