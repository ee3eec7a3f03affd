"""Kernel backends: how a ``SegLinear`` computes its forward, chosen by name, never silently.

A :class:`Backend` is registered under a name (:func:`register_backend`). ``SegLinear.forward`` calls
``backend.forward(module, x)`` of the backend named by ``module.backend_name``. :func:`set_backend`
switches the ``SegLinear`` layers of a model: it checks every layer first (``Backend.check`` raises
:class:`~segquant.errors.BackendUnavailableError` naming the layer, the backend, the reason and what
would work), then drops the previous backend's packed tensors and lets the new backend ``pack`` its own
layout of the weights. Packed tensors are non-persistent buffers: ``.to()`` moves them, ``state_dict``
and save files never contain them; the canonical buffers stay what save/load writes.

Built-in names: ``"emulated"`` (pure torch on any device: :mod:`segquant.kernels.reference`) and
``"gpu"`` (real low-bit kernels on CUDA, module ``segquant.kernels.gpu``). Their modules are imported
on first use, so ``import segquant`` never imports Triton or touches CUDA.
"""

from __future__ import annotations

import importlib
from typing import ClassVar

from torch import Tensor, nn

from segquant.errors import BackendUnavailableError
from segquant.nn.spec import SegLinearSpec

DEFAULT_BACKEND = "emulated"
EMULATED_ALTERNATIVE = "use backend 'emulated' (real_quant: false), which runs anywhere"

_MODULES = {"emulated": "segquant.kernels.emulated", "gpu": "segquant.kernels.gpu"}
_REGISTRY: dict[str, type[Backend]] = {}
_INSTANCES: dict[str, Backend] = {}


class Backend:
    """How a ``SegLinear`` computes its forward. Subclasses are registered by name."""

    name: ClassVar[str]

    def check(self, module: nn.Module, layer_name: str) -> None:
        """Raise ``BackendUnavailableError(layer_name, self.name, reason, alternative)`` if this backend
        cannot run this ``SegLinear`` here (no GPU, no Triton, unsupported formats or segments)."""

    def pack(self, module: nn.Module) -> None:
        """Build backend-private tensors from the canonical buffers and register them with
        ``module.register_buffer(name, t, persistent=False)``. Called by :func:`set_backend`."""

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        """``x`` ``(..., K)`` float -> ``(..., N)`` in ``x.dtype``."""
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> Backend:
        return self  # stateless: a copied SegLinear shares it


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    _INSTANCES.pop(cls.name, None)
    return cls


def available_backends() -> list[str]:
    """Every backend name that can be asked for (whether it runs here is decided by its check)."""
    return sorted(set(_REGISTRY) | set(_MODULES))


def get_backend(name: str, layer: str = "<any>") -> Backend:
    """The backend registered as ``name``, importing its module on first use.

    Raises :class:`BackendUnavailableError` naming ``layer`` for an unknown name or a backend whose
    module cannot be imported here (e.g. ``"gpu"`` without its kernels or without Triton).
    """
    if name not in _INSTANCES:
        _INSTANCES[name] = _backend_class(name, layer)()
    return _INSTANCES[name]


def _backend_class(name: str, layer: str) -> type[Backend]:
    if name not in _REGISTRY and name in _MODULES:
        try:
            importlib.import_module(_MODULES[name])
        except ImportError as exc:
            missing = getattr(exc, "name", None)
            reason = (f"this installation has no {_MODULES[name]} module" if missing == _MODULES[name]
                      else f"importing {_MODULES[name]} failed ({type(exc).__name__}: {exc})")
            raise BackendUnavailableError(layer, name, reason, EMULATED_ALTERNATIVE) from exc
    if name not in _REGISTRY:
        raise BackendUnavailableError(layer, name, "no backend has this name",
                                      f"known backends: {', '.join(available_backends())}")
    return _REGISTRY[name]


def seglinear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(qualified name, module)]`` of every ``SegLinear`` in ``model`` (``model`` itself included)."""
    return [(name or type(module).__name__, module) for name, module in model.named_modules()
            if isinstance(getattr(module, "spec", None), SegLinearSpec) and hasattr(module, "backend_name")]


def set_backend(model: nn.Module, name: str, layers: list[str] | None = None) -> nn.Module:
    """Run every ``SegLinear`` of ``model`` (or only those named in ``layers``) with backend ``name``.

    Every layer is checked before anything changes; then each drops the old backend's packed buffers,
    the new backend packs its own, and ``module.backend_name`` becomes ``name``. Returns ``model``.
    """
    targets = [(n, m) for n, m in seglinear_modules(model) if layers is None or n in layers]
    if not targets:
        return model
    backend = get_backend(name, layer=targets[0][0] if len(targets) == 1 else f"{targets[0][0]} (and others)")
    for layer_name, module in targets:
        backend.check(module, layer_name)
    for _layer_name, module in targets:
        attach(module, backend)
    return model


def attach(module: nn.Module, backend: Backend) -> None:
    """Switch one (already checked) ``SegLinear`` to ``backend``: drop packed buffers, pack, remember it."""
    for packed in list(module._non_persistent_buffers_set):
        delattr(module, packed)
    backend.pack(module)
    module.backend_name = backend.name
    module._backend = backend
