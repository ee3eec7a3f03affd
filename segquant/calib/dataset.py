"""``CalibrationSet``: a ``torch.utils.data.Dataset`` of recorded denoiser calls, in memory or streamed
from a dump folder.

``dataset[i]`` is the keyword-argument dict of record ``i`` (replay it with ``denoiser(**dataset[i])``);
``dataset.info(i)`` is its :class:`~segquant.pipeline.steps.StepInfo`. ``get_dataloader`` batches
records into dicts of keyword arguments (see :func:`~segquant.calib.records.collate_records`), the
batch format ``quantize()`` takes. A set on disk keeps one decoded shard in memory; shuffling is done
shard by shard (shards in random order, records in random order within each shard), so each shard is
read once per epoch and memory stays bounded by one shard.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segquant.calib.records import collate_records, info_from_row
from segquant.calib.storage import ShardWriter, prepare_dump, read_manifest, read_shard
from segquant.errors import CalibrationError, ConfigError, CorruptShardError
from segquant.pipeline.steps import StepInfo


class _MemorySource:
    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.blocks = [range(len(records))]

    def get(self, index: int) -> dict[str, Any]:
        return self.records[index]


class _ShardSource:
    def __init__(self, root: Path, manifest: dict[str, Any], verify: bool):
        self.root, self.manifest, self.verify = root, manifest, verify
        self.starts = [0]
        for entry in manifest["shards"]:
            self.starts.append(self.starts[-1] + entry["records"])
        self.blocks = [range(a, b) for a, b in zip(self.starts[:-1], self.starts[1:])]
        self._cached: tuple[int, list[dict[str, Any]]] | None = None

    def get(self, index: int) -> dict[str, Any]:
        shard = bisect.bisect_right(self.starts, index) - 1
        if self._cached is None or self._cached[0] != shard:
            self._cached = None  # free the previous shard before decoding the next one
            self._cached = (shard, read_shard(self.root, self.manifest["shards"][shard], self.verify))
        return self._cached[1][index - self.starts[shard]]


class BlockShuffleSampler(Sampler[int]):
    """Shuffles blocks (shards) and the indices within each block; a new order every epoch.

    The order of epoch ``e`` depends only on ``seed + e``.
    """

    def __init__(self, blocks: Sequence[range], seed: int = 0):
        self.blocks, self.seed, self.epoch = list(blocks), seed, 0

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        for b in torch.randperm(len(self.blocks), generator=gen).tolist():
            block = self.blocks[b]
            for j in torch.randperm(len(block), generator=gen).tolist():
                yield block[j]


class CalibrationSet(Dataset):
    """Recorded denoiser calls. Build with ``from_records`` (in memory) or ``load_calibrate_set``.

    Attributes:
        settings: JSON-able settings of the run that made it (sampler, pipeline, call arguments).
        path: dump folder, or ``None`` for an in-memory set.
    """

    def __init__(self, source: Any, infos: list[StepInfo], settings: dict[str, Any] | None, path: Path | None):
        self._source, self._infos = source, infos
        self.settings = settings or {}
        self.path = path

    @classmethod
    def from_records(
        cls, records: list[dict[str, Any]], infos: list[StepInfo], settings: dict[str, Any] | None = None
    ) -> "CalibrationSet":
        """An in-memory set; ``records[i]`` is described by ``infos[i]``."""
        if len(records) != len(infos):
            raise CalibrationError(f"{len(records)} records but {len(infos)} record infos")
        return cls(_MemorySource(list(records)), list(infos), settings, None)

    def __len__(self) -> int:
        return len(self._infos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Keyword arguments of record ``index`` (tensors on CPU, as recorded). Do not modify them."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for a calibration set of {len(self)} records")
        return self._source.get(index % len(self))

    def info(self, index: int) -> StepInfo:
        """Where record ``index`` was taken (prompt, step, timestep, guidance branches)."""
        return self._infos[index]

    def get_dataloader(self, batch_size: int = 1, shuffle: bool = False, seed: int = 0, **kwargs: Any) -> DataLoader:
        """A ``DataLoader`` yielding dicts of keyword arguments (records batched by ``collate_records``).

        ``shuffle`` shuffles shard by shard (see the module docstring), seeded by ``seed``. Extra
        ``kwargs`` go to ``DataLoader`` (e.g. ``num_workers``, ``drop_last``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size: {batch_size!r} must be a positive integer")
        sampler = BlockShuffleSampler(self._source.blocks, seed) if shuffle else None
        return DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=collate_records, **kwargs)

    def save(self, dump_path: str | os.PathLike, chunk_size: int = 400, compress: bool = True) -> "CalibrationSet":
        """Write this set to ``dump_path`` (shards + manifest) and return the set loaded from there."""
        settings = {**self.settings, "chunk_size": chunk_size, "compress": bool(compress)}
        prepare_dump(dump_path, settings, overwrite=True)
        writer = ShardWriter(dump_path, chunk_size, compress, settings)
        for i in range(len(self)):
            writer.add(self[i], self._infos[i])
        writer.close()
        return load_calibrate_set(dump_path)

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path else "in memory"
        return f"CalibrationSet({len(self)} records, {where})"


def load_calibrate_set(dump_path: str | os.PathLike, verify: bool = True, allow_incomplete: bool = False) -> CalibrationSet:
    """Open the calibration set in ``dump_path``; shards are read lazily, one at a time.

    Args:
        verify: check each shard's SHA-256 against the manifest when it is read.
        allow_incomplete: open an interrupted run's shards (otherwise ``CalibrationError``; resume it by
            calling ``generate_calibrate_set`` again with the same arguments).
    Raises:
        CorruptShardError: missing/unreadable manifest (naming the file); a shard is checked when read.
    """
    root = Path(dump_path)
    manifest = read_manifest(root)
    if manifest is None:
        raise CorruptShardError(f"{root / 'manifest.json'} is missing: {root} is not a calibration set")
    if manifest["status"] != "complete" and not allow_incomplete:
        raise CalibrationError(
            f"the calibration set in {root} is incomplete ({manifest['num_records']} records); resume it by "
            "calling generate_calibrate_set with the same arguments, or pass allow_incomplete=True"
        )
    infos = [info_from_row(r) for r in manifest["records"]]
    return CalibrationSet(_ShardSource(root, manifest, verify), infos, manifest.get("settings"), root)
