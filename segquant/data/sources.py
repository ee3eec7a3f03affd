"""Image + caption sources for control data, read from their usual local layouts.

Each layout yields :class:`SourceItem` (a stable ``key`` for reports and resuming, the prompt and the
image path; the image is not opened here):

- ``coco``: a COCO captions JSON (``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``) and an image folder. Given a folder, the JSON is ``annotations/captions_<split>.json``
  and the images are in ``<split>/`` (e.g. ``val2017/``) or ``images/``. One item per image that has a
  caption, in the JSON's image order; the prompt is its first caption (lowest annotation id).
- ``mjhq``: MJHQ-30K, ``meta_data.json`` (``{image_id: {"category", "prompt"}}``) beside one folder per
  category holding ``<image_id>.jpg`` (or ``.png``); key ``category/image_id``.
- ``dci``: Densely Captioned Images, ``annotations/*.json`` (sorted) with ``"image"`` naming a file in
  ``photos/``; the prompt is ``short_caption`` then ``extra_caption`` (as in ``load_prompts``).
- ``segquant``: the SegQuant reference pre-processed layout (and what ``build_canny_dataset`` writes):
  ``metadata.json``, a list of ``{"prompt", "image", "control"}`` with paths relative to the folder.
  Its images are read again and their edges recomputed at the chosen resolution and thresholds.

``detect_layout(root)`` picks the layout from the files present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from segquant.data.prompts import _dci_prompt
from segquant.errors import ConfigError

LAYOUTS: tuple[str, ...] = ("auto", "coco", "mjhq", "dci", "segquant")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class SourceItem:
    """One source image: ``key`` (unique, stable name), ``prompt`` and ``image`` path."""

    key: str
    prompt: str
    image: Path


def _coco_json(root: Path) -> Path:
    if root.is_file():
        return root
    found = sorted((root / "annotations").glob("captions_*.json")) + sorted(root.glob("captions*.json"))
    if not found:
        raise ConfigError(f"{root}: no COCO captions JSON (annotations/captions_<split>.json)")
    return found[0]


def _coco_images(root: Path, captions: Path) -> Path:
    base = root if root.is_dir() else captions.parent
    split = captions.stem.removeprefix("captions_")
    for folder in (base / split, base / "images" / split, base / "images", captions.parent.parent / split):
        if folder.is_dir():
            return folder
    raise ConfigError(f"{root}: no COCO image folder ({split}/ or images/); give image_dir=")


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the annotation JSON: {err}") from err


def iter_coco(root: Path, image_dir: Path | None = None) -> Iterator[SourceItem]:
    captions = _coco_json(root)
    data = _load_json(captions)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ConfigError(f"{captions}: not a COCO captions file (needs 'images' and 'annotations')")
    images = Path(image_dir) if image_dir is not None else _coco_images(root, captions)
    first: dict[int, tuple[int, str]] = {}
    for ann in data["annotations"]:
        key = (ann.get("id", 0), ann["caption"].strip())
        first[ann["image_id"]] = min(first.get(ann["image_id"], key), key)
    for entry in data["images"]:
        if entry["id"] in first:
            yield SourceItem(entry["file_name"], first[entry["id"]][1], images / entry["file_name"])


def _mjhq_image(root: Path, category: str, image_id: str) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        path = root / category / f"{image_id}{suffix}"
        if path.exists():
            return path
    return root / category / f"{image_id}.jpg"  # missing: reported by the builder


def iter_mjhq(root: Path) -> Iterator[SourceItem]:
    meta = root / "meta_data.json" if root.is_dir() else root
    data = _load_json(meta)
    if not isinstance(data, dict):
        raise ConfigError(f"{meta}: not an MJHQ meta_data.json (expected an object of image ids)")
    for image_id, entry in data.items():
        if not isinstance(entry, dict) or "prompt" not in entry or "category" not in entry:
            raise ConfigError(f"{meta}: entry {image_id!r} lacks 'prompt' or 'category'")
        yield SourceItem(f"{entry['category']}/{image_id}", entry["prompt"],
                         _mjhq_image(meta.parent, entry["category"], image_id))


def iter_dci(root: Path, extra_caption: bool = True) -> Iterator[SourceItem]:
    files = sorted((root / "annotations").glob("*.json"))
    if not files:
        raise ConfigError(f"{root}: no DCI annotations (annotations/*.json)")
    for path in files:
        entry = _load_json(path)
        if not isinstance(entry, dict) or "image" not in entry:
            raise ConfigError(f"{path}: not a DCI annotation (no 'image')")
        yield SourceItem(path.name, _dci_prompt(entry, path, extra_caption), root / "photos" / entry["image"])


def iter_segquant(root: Path) -> Iterator[SourceItem]:
    meta = root / "metadata.json"
    data = _load_json(meta)
    if not isinstance(data, list):
        raise ConfigError(f"{meta}: expected a list of {{'prompt', 'image', 'control'}} entries")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "prompt" not in entry or "image" not in entry:
            raise ConfigError(f"{meta}: entry {i} lacks 'prompt' or 'image'")
        yield SourceItem(entry["image"], entry["prompt"], root / entry["image"])


def detect_layout(root: str | Path) -> str:
    """The layout of ``root`` (see the module docstring); raises ``ConfigError`` naming what was looked for."""
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"source {root} does not exist")
    if root.is_file():
        return "mjhq" if root.name == "meta_data.json" else "coco"
    checks = (("segquant", root / "metadata.json"), ("mjhq", root / "meta_data.json"),
              ("dci", root / "photos"), ("coco", root / "annotations"))
    for layout, marker in checks:
        if marker.exists():
            return layout
    if any(root.glob("captions*.json")):
        return "coco"
    raise ConfigError(f"{root}: unknown layout; expected metadata.json (segquant), meta_data.json (mjhq), "
                      "annotations/ + photos/ (dci) or annotations/captions_*.json (coco)")


def iter_source(root: str | Path, layout: str = "auto", image_dir: str | Path | None = None,
                dci_extra_caption: bool = True) -> Iterator[SourceItem]:
    """The items of ``root`` in ``layout`` (``"auto"``: :func:`detect_layout`); ``image_dir``: COCO images."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: {layout!r} is not valid; allowed: {', '.join(LAYOUTS)}")
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "coco":
        return iter_coco(root, Path(image_dir) if image_dir else None)
    if layout == "mjhq":
        return iter_mjhq(root)
    if layout == "dci":
        return iter_dci(root, dci_extra_caption)
    return iter_segquant(root)
