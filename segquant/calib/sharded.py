"""Calibration sets recorded by several ``torchrun`` ranks into one dump folder.

Layout::

    manifest.json              the merged index (written by rank 0 once every rank is done)
    rank-00000/                rank 0's prompts: its own shards + manifest.json (a complete set by itself)
    rank-00001/                ...

Rank ``r`` records the prompts ``segquant.distributed.shard_range(n)`` gives it, keeping each prompt's
global id and seed, into ``rank-<r>/`` with the ordinary resumable writer; its settings are the run's
settings plus ``shard`` (rank, world size, prompt range), so a rerun with another world size is refused
by name instead of mixing ranges. The merged index lists every rank's shards (paths relative to the
dump folder) and records in rank order, which is prompt order: the set reads back record for record
as a single-process run (shard boundaries differ, so a shard-shuffled loader orders them differently).
A rank that dies leaves the other ranks' folders complete; a rerun skips them and resumes it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segquant.calib.storage import MANIFEST, prepare_dump, read_manifest, write_manifest
from segquant.distributed import World
from segquant.errors import CalibrationError, ConfigError

RANK_PREFIX = "rank-"


def rank_folder(root: str | os.PathLike, rank: int) -> Path:
    """The folder of ``rank``'s part of the set in dump folder ``root``."""
    return Path(root) / f"{RANK_PREFIX}{rank:05d}"


def rank_settings(settings: dict[str, Any], ids: range, world: World) -> dict[str, Any]:
    """The settings stored in a rank's folder: the run's settings and which prompts the rank holds."""
    return {**settings, "shard": {"rank": world.rank, "world_size": world.size, "prompts": [ids.start, ids.stop]}}


def prepare_merged(root: str | os.PathLike, settings: dict[str, Any], overwrite: bool) -> bool:
    """Check dump folder ``root`` before a sharded run (rank 0); ``True`` when it already holds the
    complete set made with ``settings`` (nothing to record).

    Raises ``ConfigError`` for a set made with other settings (unless ``overwrite``: its index is
    removed), for an interrupted single-process set, and for a non-empty folder that holds neither an
    index nor rank folders (unless ``overwrite``).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if read_manifest(root) is None:
        stray = sorted(p.name for p in root.iterdir() if not p.name.startswith(RANK_PREFIX))
        if stray and not overwrite:
            raise ConfigError(f"dump_path {root} is not empty ({stray[0]}) and holds no {MANIFEST}; "
                              "use an empty folder")
        return False
    manifest = prepare_dump(root, settings, overwrite)
    if manifest is not None and manifest["status"] != "complete":
        raise ConfigError(f"dump_path {root} holds an interrupted single-process calibration set; resume it with "
                          "one process, or choose another dump_path")
    return manifest is not None


def merge_rank_sets(root: str | os.PathLike, settings: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Write the merged index of the ``world_size`` rank folders of ``root`` (rank 0, after every rank
    closed its set) and return it. Raises ``CalibrationError`` naming a rank whose set is missing or
    incomplete."""
    parts = []
    for rank in range(world_size):
        folder = rank_folder(root, rank)
        manifest = read_manifest(folder)
        if manifest is None or manifest["status"] != "complete":
            state = "missing" if manifest is None else "incomplete"
            raise CalibrationError(f"{folder}: the calibration set of rank {rank} is {state}; rerun with the same "
                                   "arguments and world size to complete it")
        parts.append((folder.name, manifest))
    merged = {
        **parts[0][1],
        "settings": settings,
        "status": "complete",
        "num_records": sum(m["num_records"] for _, m in parts),
        "schema": next((m["schema"] for _, m in parts if m["schema"] is not None), None),
        "shards": [{**entry, "file": f"{name}/{entry['file']}"} for name, m in parts for entry in m["shards"]],
        "prompts": [p for _, m in parts for p in m["prompts"]],
        "records": [r for _, m in parts for r in m["records"]],
    }
    write_manifest(root, merged)
    return merged
