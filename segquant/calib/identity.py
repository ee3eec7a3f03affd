"""What identifies a calibration run, deterministically across processes, machines and Python versions.

A run is identified by JSON: prompts, sampler, pipeline and layer settings, call arguments. Values
become JSON through :func:`jsonable` (tensors, arrays and images by shape, dtype and SHA-256 of their
bytes); dict keys are sorted and sets are sorted, and configuration bookkeeping that does not change
the computation is dropped: diffusers' keys that start with ``_`` (``_use_default_values`` is a list
whose order follows ``PYTHONHASHSEED``, ``_diffusers_version``, ``_name_or_path``, ...). Identities
are SHA-256 hex digests of the canonical JSON text; Python's ``hash()`` (salted per process) is
never used.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import Tensor


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jsonable(value: Any) -> Any:
    """A JSON-able, content-identifying summary of a pipeline argument or setting (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().reshape(-1)
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": _sha256(data.view(torch.uint8).numpy().tobytes())}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=canonical_json)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Generator):
        return {"generator": value.initial_seed()}
    if hasattr(value, "tobytes") and hasattr(value, "size") and hasattr(value, "mode"):  # PIL image
        return {"image": list(value.size), "mode": value.mode, "sha256": _sha256(value.tobytes())}
    if hasattr(value, "tobytes") and hasattr(value, "shape"):  # numpy array
        return {"array": list(value.shape), "dtype": str(value.dtype), "sha256": _sha256(value.tobytes())}
    if callable(value):
        return {"callable": getattr(value, "__qualname__", type(value).__name__)}
    return {"object": type(value).__name__}


def canonical_json(value: Any) -> str:
    """Canonical JSON text of ``jsonable(value)``: sorted keys, no whitespace, ASCII only."""
    return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(value: Any) -> str:
    """SHA-256 hex digest of ``canonical_json(value)``: the same in every process."""
    return _sha256(canonical_json(value).encode("ascii"))
