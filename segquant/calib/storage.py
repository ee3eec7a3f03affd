"""On-disk calibration sets: chunked safetensors shards, optional zstandard compression, a JSON manifest.

Layout of a dump folder::

    manifest.json                      format/versions, status, settings, shards, per-record info
    shard-00000.safetensors[.zst]      up to chunk_size records each

A shard is one safetensors file holding the tensors of its records (keys ``t0, t1, ...``); its
``__metadata__["segquant_records"]`` is the JSON list of the records' skeletons
(:func:`~segquant.calib.records.encode_tree`), so a shard is self-describing. With compression the
whole file is one zstandard frame. The manifest lists every shard with its record count, byte size
and SHA-256; it is rewritten atomically after each shard, so an interrupted run leaves a consistent
``"incomplete"`` manifest that :func:`prepare_dump` resumes from. Reading checks size and checksum and
raises ``CorruptShardError`` naming the file for a missing, truncated or corrupt shard.

Memory: the writer holds one chunk of records (plus its serialised bytes while writing it); the reader
holds one decoded shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from segquant.calib.identity import jsonable
from segquant.calib.records import decode_tree, describe_tree, encode_tree, info_from_row, info_to_row
from segquant.errors import ConfigError, CorruptShardError
from segquant.pipeline.steps import StepInfo

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "segquant-calibset"
FORMAT_VERSION = 1
ZSTD_LEVEL = 3
_META_KEY = "segquant_records"


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise ImportError("compressed calibration shards need zstandard: pip install 'segquant[calib]'") from None
    return zstandard


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that wrote a set (recorded in the manifest)."""
    seg = getattr(sys.modules.get("segquant"), "__version__", None) or _version("segquant")
    out = {"segquant": seg, "torch": torch.__version__}
    for dist in ("safetensors", "diffusers", "zstandard"):
        out[dist] = _version(dist)
    return out


def read_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of dump folder ``root`` or ``None`` when there is none; unreadable -> CorruptShardError."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptShardError(f"calibration manifest {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptShardError(f"{path} is not a segquant calibration-set manifest")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CorruptShardError(f"{path} has format version {data['format_version']}; this segquant reads <= {FORMAT_VERSION}")
    return data


def write_manifest(root: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write the manifest atomically (temporary file + rename)."""
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            diff = _first_difference(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
            if diff:
                return diff
        return None
    return None if old == new else f"{prefix}: {old!r} (stored) != {new!r} (now)"


def _remove_set_files(root: Path) -> None:
    for path in root.iterdir():
        if path.name.startswith("shard-") or path.name.startswith(MANIFEST):
            path.unlink()


def prepare_dump(root: str | os.PathLike, settings: dict[str, Any], overwrite: bool = False) -> dict[str, Any] | None:
    """Get dump folder ``root`` ready for a run with ``settings``; return the manifest to resume from.

    Returns ``None`` for a fresh run, else the existing manifest (status ``"incomplete"``: resume;
    ``"complete"``: nothing to do). Settings are compared canonically (``identity.jsonable``: no
    ``_``-bookkeeping keys, sets sorted), so any process may resume. A manifest made with other settings
    raises ``ConfigError`` naming the first differing key, unless ``overwrite`` (then the old shards are deleted).
    A non-empty folder without a manifest raises ``ConfigError`` unless ``overwrite``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    if manifest is None:
        if any(root.iterdir()) and not overwrite:
            raise ConfigError(f"dump_path {root} is not empty and holds no {MANIFEST}; use an empty folder")
    else:
        diff = _first_difference(jsonable(manifest.get("settings")), jsonable(settings))
        if diff is None:
            return manifest
        if not overwrite:
            raise ConfigError(
                f"dump_path {root} holds a calibration set made with other settings ({diff}); "
                "pass overwrite=True or choose another dump_path"
            )
        logger.warning("overwriting the calibration set in %s (%s)", root, diff)
    _remove_set_files(root)
    return None


@dataclass
class _Progress:
    shards: list[dict[str, Any]] = field(default_factory=list)
    infos: list[StepInfo] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] | None = None


def _storable(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors with their own storage (safetensors refuses shared or strided ones)."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and (ptr in seen or t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes):
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


class ShardWriter:
    """Appends records to a dump folder in shards of ``chunk_size`` records.

    Args:
        root: dump folder (prepared by ``prepare_dump``).
        chunk_size: records per shard (>= 1).
        compress: zstandard-compress each shard.
        settings: JSON-able settings stored in the manifest (sampler, pipeline, ...).
        resume: manifest of an interrupted run to continue (its shards are kept).
    """

    def __init__(self, root, chunk_size: int, compress: bool, settings: dict[str, Any], resume: dict | None = None):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size: {chunk_size!r} must be a positive integer")
        if compress:
            _zstd()
        self.root, self.chunk_size, self.compress, self.settings = Path(root), chunk_size, bool(compress), settings
        self._buffer: list[dict[str, Any]] = []
        self._buffer_infos: list[StepInfo] = []
        self.progress = _Progress()
        if resume is not None:
            self.progress = _Progress(
                shards=list(resume["shards"]),
                infos=[info_from_row(r) for r in resume["records"]],
                prompts=list(resume["prompts"]),
                schema=resume.get("schema"),
            )
        self._write_manifest("incomplete")

    @property
    def num_records(self) -> int:
        return len(self.progress.infos) + len(self._buffer)

    def add(self, record: dict[str, Any], info: StepInfo) -> None:
        """Buffer one record; write a shard when the buffer holds ``chunk_size`` records."""
        if self.progress.schema is None:
            self.progress.schema = describe_tree(record)
        self._buffer.append(record)
        self._buffer_infos.append(info)
        if len(self._buffer) >= self.chunk_size:
            self.flush()

    def end_prompt(self, prompt_id: int, digest: str | None, num_records: int) -> None:
        """Mark prompt ``prompt_id`` complete (stored in the manifest at the next shard)."""
        self.progress.prompts.append({"id": prompt_id, "digest": digest, "records": num_records})

    def flush(self) -> None:
        """Write the buffered records as one shard and update the manifest."""
        if not self._buffer:
            return
        index = len(self.progress.shards)
        name = f"shard-{index:05d}.safetensors" + (".zst" if self.compress else "")
        data = self._serialise(self._buffer)
        tmp = self.root / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.root / name)
        entry = {"file": name, "records": len(self._buffer), "bytes": len(data)}
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        self.progress.shards.append(entry)
        self.progress.infos.extend(self._buffer_infos)
        self._buffer, self._buffer_infos = [], []
        self._write_manifest("incomplete")
        logger.debug("wrote %s (%d records, %d bytes)", name, entry["records"], entry["bytes"])

    def _serialise(self, records: list[dict[str, Any]]) -> bytes:
        from safetensors.torch import save

        tensors: dict[str, Tensor] = {}
        skeletons = [encode_tree(r, tensors) for r in records]
        raw = save(_storable(tensors), metadata={_META_KEY: json.dumps(skeletons)})
        if not self.compress:
            return raw
        return _zstd().ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compress(raw)

    def close(self) -> dict[str, Any]:
        """Write the last (partial) shard and mark the set complete; return the manifest."""
        self.flush()
        return self._write_manifest("complete")

    def _write_manifest(self, status: str) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "status": status,
            "versions": library_versions(),
            "settings": self.settings,
            "codec": "zstd" if self.compress else "none",
            "num_records": len(self.progress.infos),
            "schema": self.progress.schema,
            "shards": self.progress.shards,
            "prompts": self.progress.prompts,
            "records": [info_to_row(info) for info in self.progress.infos],
        }
        write_manifest(self.root, data)
        return data


def _safetensors_metadata(raw: bytes, path: Path) -> dict[str, str]:
    if len(raw) < 8:
        raise CorruptShardError(f"calibration shard {path} is truncated (no safetensors header)")
    size = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + size])
    except ValueError:
        raise CorruptShardError(f"calibration shard {path} has a corrupt safetensors header") from None
    return header.get("__metadata__") or {}


def read_shard(root: str | os.PathLike, entry: dict[str, Any], verify: bool = True) -> list[dict[str, Any]]:
    """Decode the records of one shard listed in the manifest.

    Raises ``CorruptShardError`` naming the file when it is missing, has another size than the
    manifest says (truncated), fails the SHA-256 check (``verify``), or cannot be decoded.
    """
    path = Path(root) / entry["file"]
    if not path.exists():
        raise CorruptShardError(f"calibration shard {path} is missing (listed in {MANIFEST})")
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise CorruptShardError(f"calibration shard {path} is truncated or altered: {len(data)} bytes, {MANIFEST} says {entry['bytes']}")
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CorruptShardError(f"calibration shard {path} is corrupt: its SHA-256 does not match {MANIFEST}")
    try:
        if path.name.endswith(".zst"):
            data = _zstd().ZstdDecompressor().decompress(data)
        skeletons = json.loads(_safetensors_metadata(data, path)[_META_KEY])
        from safetensors.torch import load

        tensors = load(data)
        records = [decode_tree(s, tensors) for s in skeletons]
    except CorruptShardError:
        raise
    except Exception as exc:  # zstd, safetensors and JSON errors all mean a corrupt shard
        raise CorruptShardError(f"calibration shard {path} cannot be decoded: {type(exc).__name__}: {exc}") from None
    if len(records) != entry["records"]:
        raise CorruptShardError(f"calibration shard {path} holds {len(records)} records, {MANIFEST} says {entry['records']}")
    return records
