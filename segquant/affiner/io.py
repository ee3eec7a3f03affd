"""Save and load fitted corrections: a folder with ``correction.safetensors`` (tensors) and
``correction.json`` (kind, constructor config, step count, timesteps, latent grid). No pickle.

    save_correction(affiner, "affiner-w4a8")
    affiner = load_correction("affiner-w4a8")        # -> BlockwiseAffiner / PTQDCorrector / TACCorrector

A missing, truncated or inconsistent file raises :class:`~segquant.errors.CorruptCheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path

from segquant.errors import CorruptCheckpointError, MissingCheckpointFileError

FORMAT, VERSION = "segquant-correction", 1
TENSORS_NAME, META_NAME = "correction.safetensors", "correction.json"


def _kinds() -> dict:
    from segquant.affiner.blockwise import BlockwiseAffiner
    from segquant.affiner.ptqd import PTQDCorrector
    from segquant.affiner.tac import TACCorrector

    return {cls.kind: cls for cls in (BlockwiseAffiner, PTQDCorrector, TACCorrector)}


def save_correction(corr, folder: str | Path) -> Path:
    """Write ``corr`` (a fitted segquant correction) into ``folder`` (created); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"params.{s}.{n}": t.contiguous() for s, p in corr.params.items() for n, t in p.items()}
    tensors.update({f"input_bias.{s}": t.contiguous() for s, t in getattr(corr, "input_bias", {}).items()})
    save_file(tensors, str(folder / TENSORS_NAME))
    meta = {"format": FORMAT, "version": VERSION, "kind": corr.kind, "config": corr.config(),
            "num_steps": corr.num_steps, "timesteps": {str(s): t for s, t in corr.timesteps.items()},
            "grid_shape": None if corr.grid_shape is None else list(corr.grid_shape),
            "packed_grid": None if corr.packed_grid is None else list(corr.packed_grid)}
    (folder / META_NAME).write_text(json.dumps(meta, indent=2))
    return folder


def _read_meta(folder: Path) -> dict:
    path = folder / META_NAME
    if not path.is_file():
        raise MissingCheckpointFileError(f"{path}: no saved correction here")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CorruptCheckpointError(f"{path}: not a {FORMAT} v{VERSION} file")
    if meta.get("kind") not in _kinds():
        raise CorruptCheckpointError(f"{path}: unknown correction kind {meta.get('kind')!r}")
    return meta


def _read_tensors(folder: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / TENSORS_NAME
    if not path.is_file():
        raise MissingCheckpointFileError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpointError(f"{path}: unreadable ({exc})") from exc


def load_correction(folder: str | Path):
    """The correction saved in ``folder`` by :func:`save_correction`, ready to apply."""
    folder = Path(folder)
    meta, tensors = _read_meta(folder), _read_tensors(folder)
    try:
        corr = _kinds()[meta["kind"]](**meta["config"])
        corr.num_steps = meta["num_steps"]
        corr.timesteps = {int(s): float(t) for s, t in meta["timesteps"].items()}
        corr.grid_shape = None if meta["grid_shape"] is None else tuple(meta["grid_shape"])
        corr.packed_grid = None if meta["packed_grid"] is None else tuple(meta["packed_grid"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpointError(f"{folder / META_NAME}: bad field ({exc})") from exc
    for key, tensor in tensors.items():
        part = key.split(".")
        if part[0] == "params" and len(part) == 3:
            corr.params.setdefault(int(part[1]), {})[part[2]] = tensor
        elif part[0] == "input_bias" and len(part) == 2 and hasattr(corr, "input_bias"):
            corr.input_bias[int(part[1])] = tensor
        else:
            raise CorruptCheckpointError(f"{folder / TENSORS_NAME}: unexpected tensor {key!r}")
    if set(corr.params) != set(corr.timesteps):
        raise CorruptCheckpointError(f"{folder}: fitted steps {sorted(corr.timesteps)} but parameters for "
                                     f"{sorted(corr.params)}")
    return corr
