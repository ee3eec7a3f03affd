"""Control data: build (prompt, image, Canny edge map) triples and read them back.

``build_canny_dataset(source, out)`` reads a COCO / MJHQ-30K / DCI / SegQuant-preprocessed source
(:mod:`segquant.data.sources`) and writes, in the SegQuant reference layout::

    out/images/000000.jpg      resized RGB image (R x R, JPEG quality 95)
    out/controls/000000.png    its Canny edge map (R x R, single channel, 255 = edge)
    out/metadata.json          [{"id", "key", "prompt", "image", "control"}, ...] (paths relative to out)
    out/build.json             source, layout, Canny settings, counts, status
    out/progress.jsonl         one line per processed source item (done or skipped, with the reason)

The build is resumable: items already in ``progress.jsonl`` are not processed again (a run with other
settings refuses to mix, unless ``overwrite=True``). A missing or undecodable image is logged by its
key with the reason, counted and skipped; the run goes on. ``id`` is the item's position in the
source, so file names do not depend on which items were skipped or on resuming.

``load_control_dataset(out)`` reads any folder in this layout (also one made by the reference code).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from segquant.data.canny import CannySettings, make_triple, read_rgb, require_cv2, square_resize, write_image
from segquant.data.sources import SourceItem, detect_layout, iter_source
from segquant.errors import ConfigError

logger = logging.getLogger(__name__)
_FORMAT = 1


@dataclass
class BuildReport:
    """What a build did: ``done`` triples in the folder (``new`` of them made by this run) and the
    ``skipped`` source items as ``(key, reason)``."""

    out: Path
    done: int = 0
    new: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _build_settings(source: Path, layout: str, settings: CannySettings, limit: int | None) -> dict[str, Any]:
    return {"format": _FORMAT, "source": str(source.resolve()), "layout": layout, "limit": limit,
            "canny": settings.to_dict()}


def _prepare_out(out: Path, wanted: dict[str, Any], overwrite: bool) -> dict[str, dict]:
    """Create ``out``; returns the progress entries of an earlier run with the same settings, by key."""
    build = out / "build.json"
    if build.is_file():
        old = json.loads(build.read_text())
        if old.get("settings") != wanted:
            if not overwrite:
                raise ConfigError(f"{out} holds control data made with other settings ({old.get('settings')}); "
                                  "pass overwrite=True (--overwrite) or choose another folder")
            for name in ("images", "controls"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "progress.jsonl").unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "controls").mkdir(exist_ok=True)
    build.write_text(json.dumps({"settings": wanted, "status": "running"}, indent=2))
    return _read_progress(out / "progress.jsonl")


def _read_progress(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by an interruption: that item is redone
                continue
            entries[entry["key"]] = entry
    return entries


def _process(index: int, item: SourceItem, out: Path, settings: CannySettings) -> dict[str, Any]:
    """Make and write one triple; returns its progress entry (``status`` ``done`` or ``skipped``)."""
    entry: dict[str, Any] = {"id": index, "key": item.key, "prompt": item.prompt}
    try:
        image, edges = make_triple(item.image, settings)
    except ValueError as err:
        return {**entry, "status": "skipped", "reason": f"{item.image}: {err}"}
    entry.update(image=f"images/{index:06d}.jpg", control=f"controls/{index:06d}.png")
    write_image(out / entry["image"], image)
    write_image(out / entry["control"], edges)
    return {**entry, "status": "done"}


def build_canny_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    settings: CannySettings = CannySettings(),
    limit: int | None = None,
    image_dir: str | os.PathLike | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Write Canny control triples for the first ``limit`` items of ``source`` into ``out``.

    Args:
        source: dataset folder (or COCO captions JSON / MJHQ ``meta_data.json``).
        layout: ``auto``, ``coco``, ``mjhq``, ``dci`` or ``segquant`` (see :mod:`segquant.data.sources`).
        settings: resolution and Canny thresholds (:class:`CannySettings`, documented in ``canny``).
        limit: source items to use (skipped ones count), ``None`` = all.
        image_dir: COCO image folder when it is not found next to the captions JSON.
        workers: threads (OpenCV releases the GIL while decoding, resizing, detecting and encoding).
        overwrite: replace a folder built with other settings.
        progress: tqdm bar over the source items.
    """
    require_cv2()
    source, out = Path(source), Path(out)
    layout = detect_layout(source) if layout == "auto" else layout
    items = list(itertools.islice(iter_source(source, layout, image_dir), limit))
    previous = _prepare_out(out, _build_settings(source, layout, settings, limit), overwrite)
    pending = [(i, item) for i, item in enumerate(items) if item.key not in previous]
    report = BuildReport(out, skipped=[(e["key"], e["reason"]) for e in previous.values() if e["status"] == "skipped"])
    bar = tqdm(total=len(items), initial=len(items) - len(pending), unit="img", desc="canny", disable=not progress)
    with open(out / "progress.jsonl", "a", encoding="utf-8") as log, ThreadPoolExecutor(max(1, workers)) as pool:
        for entry in pool.map(lambda job: _process(*job, out, settings), pending):
            log.write(json.dumps(entry) + "\n")
            log.flush()
            previous[entry["key"]] = entry
            if entry["status"] == "skipped":
                logger.warning("skipped %s: %s", entry["key"], entry["reason"])
                report.skipped.append((entry["key"], entry["reason"]))
            else:
                report.new += 1
            bar.update()
    bar.close()
    report.done = _finish(out, previous, report, settings, source, layout, limit)
    return report


def _finish(out: Path, entries: dict[str, dict], report: BuildReport, settings, source, layout, limit) -> int:
    done = sorted((e for e in entries.values() if e["status"] == "done"), key=lambda e: e["id"])
    meta = [{k: e[k] for k in ("id", "key", "prompt", "image", "control")} for e in done]
    (out / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    summary = {"settings": _build_settings(source, layout, settings, limit), "status": "complete",
               "done": len(done), "skipped": len(report.skipped)}
    (out / "build.json").write_text(json.dumps(summary, indent=2))
    return len(done)


def _to_tensor(array: np.ndarray, size: int | None) -> torch.Tensor:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` -> float32 ``(1, 3, S, S)`` in [0, 1] (grey repeated to RGB)."""
    if size is not None and array.shape[:2] != (size, size):
        array = square_resize(array, size)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    tensor = tensor.unsqueeze(-1).expand(*tensor.shape, 3) if tensor.ndim == 2 else tensor
    return tensor.permute(2, 0, 1).unsqueeze(0).contiguous()


class ControlDataset:
    """A control-data folder (``metadata.json`` + images + controls). ``ds[i]`` is ``(prompt, image,
    control)``, with float32 ``(1, 3, S, S)`` tensors in [0, 1] (the edge map repeated to 3 channels);
    ``size`` (optional) resizes them (centre crop + resize)."""

    def __init__(self, path: str | os.PathLike, size: int | None = None):
        self.path, self.size = Path(path), size
        meta = self.path / "metadata.json"
        if not meta.is_file():
            raise ConfigError(f"{self.path}: not a control-data folder (no metadata.json); "
                              "make one with `segquant dataset canny`")
        self.entries = json.loads(meta.read_text(encoding="utf-8"))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.entries]

    def control(self, i: int) -> torch.Tensor:
        """Control image ``i``: float32 ``(1, 3, S, S)`` in [0, 1]."""
        return _to_tensor(self._read(self.entries[i]["control"], grey=True), self.size)

    def image(self, i: int) -> torch.Tensor:
        """Source image ``i`` (resized): float32 ``(1, 3, S, S)`` in [0, 1]."""
        return _to_tensor(self._read(self.entries[i]["image"], grey=False), self.size)

    def _read(self, rel: str, grey: bool) -> np.ndarray:
        rgb = read_rgb(self.path / rel)
        return rgb[..., 0].copy() if grey else rgb

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        return self.entries[i]["prompt"], self.image(i), self.control(i)


def load_control_dataset(path: str | os.PathLike, size: int | None = None) -> ControlDataset:
    """Open a control-data folder (see :class:`ControlDataset`)."""
    return ControlDataset(path, size)
