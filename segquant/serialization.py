"""Save and load quantized models: a folder with ``model.safetensors`` (the canonical SegLinear buffers and
every other tensor), ``segquant_plan.json`` and ``segquant_manifest.json`` (the SHA-256 of the other two).

``load_quantized(skeleton, path)`` rebuilds the ``SegLinear`` layers of the plan on an unquantized model
of the same architecture (e.g. built from its config, random or original weights) and loads every
tensor, so outputs are bitwise identical to the saved model's. By default it first checks both files
against the manifest (``verify=False`` skips this, e.g. for a folder saved without a manifest). Every
failure raises a named error (:mod:`segquant.errors`) naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from segquant.conversion import check_backends, set_plan_backends
from segquant.errors import CheckpointMismatchError, CorruptCheckpointError, MissingCheckpointFileError
from segquant.nn.seglinear import SegLinear
from segquant.plan import QuantPlan

WEIGHTS_NAME = "model.safetensors"
PLAN_NAME = "segquant_plan.json"
MANIFEST_NAME = "segquant_manifest.json"
MANIFEST_FORMAT = "segquant-checkpoint/1"
_CHECKED = (WEIGHTS_NAME, PLAN_NAME)


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write the quantized ``model`` (from :func:`segquant.quantize`) to the folder ``path``."""
    from safetensors.torch import save_model

    plan = getattr(model, "segquant_plan", None)
    if not isinstance(plan, QuantPlan):
        raise ValueError("model has no segquant_plan: quantize it with segquant.quantize() first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS_NAME))
    plan.save_json(path / PLAN_NAME)
    manifest = {"format": MANIFEST_FORMAT, "sha256": {name: _sha256(path / name) for name in _CHECKED}}
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return path


def load_quantized(model: nn.Module, path: str | Path, backend: str | None = None, verify: bool = True,
                   ) -> nn.Module:
    """Turn the unquantized ``model`` into the quantized model saved at ``path`` (in place) and return it.

    ``verify``: check the SHA-256 of the weights and the plan against the folder's manifest first (a
    mismatch raises :class:`CorruptCheckpointError` naming the file); ``False`` skips the check.
    ``backend``: run every SegLinear with this kernel backend (``"emulated"``, ``"gpu"``); ``None`` keeps
    each layer's configured ``backend``.
    """
    path = Path(path)
    for name in (*_CHECKED, MANIFEST_NAME) if verify else _CHECKED:
        if not (path / name).is_file():
            hint = "; pass verify=False to load without checksums" if name == MANIFEST_NAME else ""
            raise MissingCheckpointFileError(f"{str(path / name)!r} is missing: is {str(path)!r} a save_quantized "
                                             f"folder?{hint}")
    if verify:
        verify_checkpoint(path)
    plan = _read_plan(path / PLAN_NAME)
    check_backends(model, plan.enabled_layers(), backend)  # fail before the model is changed
    for layer in plan.enabled_layers():
        _replace_with_seglinear(model, layer)
    _load_weights(model, path / WEIGHTS_NAME)
    set_plan_backends(model, plan, backend)
    model.segquant_plan = plan
    return model


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CorruptCheckpointError` naming the first file of the folder ``path`` whose SHA-256
    differs from its manifest."""
    path = Path(path)
    manifest = _read_json(path / MANIFEST_NAME, f"a {MANIFEST_FORMAT} manifest written by save_quantized")
    expected = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not (isinstance(expected, dict) and all(isinstance(expected.get(name), str) for name in _CHECKED)):
        raise CorruptCheckpointError(f"{str(path / MANIFEST_NAME)!r}: expected a 'sha256' entry for each of "
                                     f"{', '.join(_CHECKED)}, got {manifest!r:.200}")
    for name in _CHECKED:
        actual = _sha256(path / name)
        if actual != expected[name]:
            raise CorruptCheckpointError(f"{str(path / name)!r} has SHA-256 {actual[:16]}..., but the manifest "
                                         f"says {expected[name][:16]}...: the file changed or was damaged after "
                                         "saving (load_quantized(..., verify=False) loads it anyway)")


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_json(file: Path, expected: str) -> Any:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"{str(file)!r} is not valid JSON (line {err.lineno}, column {err.colno}: "
                                     f"{err.msg}; truncated?); expected {expected}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{str(file)!r} cannot be read as text ({err}); expected {expected}") from err


def _read_plan(file: Path) -> QuantPlan:
    data = _read_json(file, "the plan written by save_quantized")
    try:
        return QuantPlan.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptCheckpointError(f"{str(file)!r} is not a valid segquant plan ({type(err).__name__}: {err}); "
                                     "expected the plan written by save_quantized") from err


def _replace_with_seglinear(model: nn.Module, layer: Any) -> None:
    """Put an (empty) SegLinear of the plan's ``layer`` where the model has the matching ``nn.Linear``."""
    try:
        linear = model.get_submodule(layer.name)
    except AttributeError as err:
        raise CheckpointMismatchError(f"the model has no layer {layer.name!r} from the saved plan: wrong "
                                      "architecture?") from err
    if not isinstance(linear, nn.Linear) or (linear.out_features, linear.in_features) != (
            layer.out_features, layer.in_features):
        raise CheckpointMismatchError(f"layer {layer.name!r} is {linear} in the model but "
                                      f"{layer.out_features}x{layer.in_features} linear in the saved plan")
    model.set_submodule(layer.name, SegLinear(layer.spec(), device=linear.weight.device, dtype=linear.weight.dtype))


def _load_weights(model: nn.Module, file: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(file), strict=True)
    except SafetensorError as err:
        raise CorruptCheckpointError(f"{str(file)!r} is not a readable safetensors file ({err}): truncated or "
                                     "header corrupted? expected the tensors written by save_quantized") from err
    except RuntimeError as err:
        raise CheckpointMismatchError(f"the tensors of {str(file)!r} do not fit the model rebuilt from the plan "
                                      f"(wrong architecture?): {err}") from err
