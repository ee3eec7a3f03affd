"""The files of a ``save_quantized`` folder: names, format version, SHA-256 manifest, JSON and tensors.

=========================  =====================================================================
file                       content
=========================  =====================================================================
``model.safetensors``      the whole ``state_dict`` (canonical SegLinear buffers, int4 codes
                           packed; every other parameter and persistent buffer)
``segquant_plan.json``     the quantization plan (``QuantPlan.save_json``)
``segquant_model.json``    how to rebuild the model without it: ``{"format_version", "class",
                           "config"}`` (a diffusers ``ConfigMixin``; ``class`` is ``None`` otherwise)
``segquant_manifest.json`` ``{"format", "format_version", "sha256": {file: hex digest}}``
=========================  =====================================================================

Format versions: 1 (no ``segquant_model.json``; int4 codes held unpacked in int8, packed on load),
2 (two-level INT4 scales held as float32 group scales, split into steps and row bases on load; the
low-rank ``D_s`` without ``1/λ_s``, folded in on load), 3 (current). A folder of a newer version raises
:class:`CheckpointVersionError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from segquant.errors import CheckpointVersionError, CorruptCheckpointError, MissingCheckpointFileError

WEIGHTS_NAME = "model.safetensors"
PLAN_NAME = "segquant_plan.json"
MODEL_NAME = "segquant_model.json"
MANIFEST_NAME = "segquant_manifest.json"
FORMAT_VERSION = 3
MANIFEST_FORMAT = f"segquant-checkpoint/{FORMAT_VERSION}"
CHECKED = (WEIGHTS_NAME, PLAN_NAME, MODEL_NAME)
_CHECKED_V1 = (WEIGHTS_NAME, PLAN_NAME)


def write_manifest(path: Path) -> None:
    """Write ``segquant_manifest.json`` with the SHA-256 of every checked file of the folder ``path``."""
    manifest = {"format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION,
                "sha256": {name: sha256(path / name) for name in CHECKED}}
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))


def check_folder(path: Path, verify: bool) -> int:
    """The format version of the folder ``path`` after checking its files exist (and, with ``verify``,
    their SHA-256); raises a named error naming the first missing, damaged or too new file."""
    for name in _CHECKED_V1:
        require(path, name)
    if verify:
        require(path, MANIFEST_NAME, "; pass verify=False to load without checksums")
        manifest = read_json(path / MANIFEST_NAME, f"a {MANIFEST_FORMAT} manifest written by save_quantized")
        version = _version(manifest, path / MANIFEST_NAME)
    elif (path / MODEL_NAME).is_file():
        version = _version(read_json(path / MODEL_NAME, "the model description written by save_quantized"),
                           path / MODEL_NAME)
    else:
        version = 1
    if version >= 2:
        require(path, MODEL_NAME)
    if verify:
        verify_checkpoint(path)
    return version


def require(path: Path, name: str, hint: str = "") -> None:
    if not (path / name).is_file():
        raise MissingCheckpointFileError(f"{str(path / name)!r} is missing: is {str(path)!r} a save_quantized "
                                         f"folder?{hint}")


def _version(data: Any, file: Path) -> int:
    version = data.get("format_version", 1) if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise CorruptCheckpointError(f"{str(file)!r}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(f"{str(file)!r} is checkpoint format version {version}, but this segquant "
                                     f"reads versions up to {FORMAT_VERSION}: upgrade segquant to load it")
    return version


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CorruptCheckpointError` naming the first file of the folder ``path`` whose SHA-256
    differs from its manifest."""
    path = Path(path)
    manifest = read_json(path / MANIFEST_NAME, f"a {MANIFEST_FORMAT} manifest written by save_quantized")
    expected = manifest.get("sha256") if isinstance(manifest, dict) else None
    names = CHECKED if _version(manifest, path / MANIFEST_NAME) >= 2 else _CHECKED_V1
    if not (isinstance(expected, dict) and all(isinstance(expected.get(name), str) for name in names)):
        raise CorruptCheckpointError(f"{str(path / MANIFEST_NAME)!r}: expected a 'sha256' entry for each of "
                                     f"{', '.join(names)}, got {manifest!r:.200}")
    for name in names:
        actual = sha256(path / name)
        if actual != expected[name]:
            raise CorruptCheckpointError(f"{str(path / name)!r} has SHA-256 {actual[:16]}..., but the manifest "
                                         f"says {expected[name][:16]}...: the file changed or was damaged after "
                                         "saving (load_quantized(..., verify=False) loads it anyway)")


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(file: Path, expected: str) -> Any:
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"{str(file)!r} is not valid JSON (line {err.lineno}, column {err.colno}: "
                                     f"{err.msg}; truncated?); expected {expected}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{str(file)!r} cannot be read as text ({err}); expected {expected}") from err


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file (header only; shared names from its metadata)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            aliases = handle.metadata() or {}
    except SafetensorError as err:
        raise _unreadable(file, err) from err
    shapes.update({alias: shapes[kept] for alias, kept in aliases.items() if kept in shapes})
    return shapes


def read_tensors(file: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, read one by one straight onto ``device`` (shared names too)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device=str(device)) as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            aliases = handle.metadata() or {}
    except SafetensorError as err:
        raise _unreadable(file, err) from err
    tensors.update({alias: tensors[kept] for alias, kept in aliases.items() if kept in tensors})
    return tensors


def _unreadable(file: Path, err: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{str(file)!r} is not a readable safetensors file ({err}): truncated or "
                                  "header corrupted? expected the tensors written by save_quantized")
