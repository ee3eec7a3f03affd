"""Prompt files for calibration and evaluation.

``load_prompts(path, limit=None, format="auto")`` reads:

- ``lines``: plain text, one prompt per line (empty lines skipped).
- ``csv`` / ``tsv``: a header row and a prompt column, the first of ``PROMPT_COLUMNS`` present
  (case-insensitive): e.g. COCO's ``file_name,text`` CSV, PartiPrompts' ``Prompt<TAB>Category...``.
- ``coco``: the COCO captions annotation JSON (``{"annotations": [{"caption": ...}, ...]}``).
- ``mjhq``: MJHQ-30K ``meta_data.json`` (``{image_id: {"category": ..., "prompt": ...}}``, in file order).
- ``dci``: Densely Captioned Images annotation JSON files (``{"image", "short_caption",
  "extra_caption"?, ...}``), a single file or a folder of them (sorted by name); the prompt is
  ``short_caption``, followed by ``extra_caption`` when present and ``dci_extra_caption`` is true.
- ``json`` / ``jsonl``: a list (or lines) of strings or of objects with a prompt key.

``format="auto"`` decides from the file name and content. A table without a prompt column raises
``ConfigError`` naming the file and the columns it found.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from segquant.errors import ConfigError

PROMPT_COLUMNS: tuple[str, ...] = ("prompt", "text", "caption", "captions", "sentence", "short_caption")
FORMATS: tuple[str, ...] = ("auto", "lines", "csv", "tsv", "coco", "mjhq", "dci", "json", "jsonl")


def _prompt_key(keys: list[str], path: Path, what: str) -> str:
    lowered = {k.lower(): k for k in keys if isinstance(k, str)}
    for name in PROMPT_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise ConfigError(
        f"{path}: no prompt column among the {what} {list(keys)}; expected one of {list(PROMPT_COLUMNS)}"
    )


def _read_table(path: Path, delimiter: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            raise ConfigError(f"{path}: empty table, no header row")
        key = _prompt_key(list(reader.fieldnames), path, "columns")
        return [row[key] for row in reader if row.get(key)]


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _from_objects(items: list[Any], path: Path) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.append(item[_prompt_key(list(item), path, "keys")])
        else:
            raise ConfigError(f"{path}: entries must be strings or objects with a prompt key, got {type(item).__name__}")
    return out


def _dci_prompt(entry: dict[str, Any], path: Path, extra: bool) -> str:
    if "short_caption" not in entry:
        raise ConfigError(f"{path}: not a DCI annotation (no 'short_caption'; keys {sorted(entry)})")
    prompt = entry["short_caption"]
    if extra and entry.get("extra_caption"):
        prompt = f"{prompt} {entry['extra_caption']}"
    return prompt


def _read_dci(path: Path, extra: bool) -> list[str]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [_dci_prompt(json.loads(f.read_text(encoding="utf-8")), f, extra) for f in files]


def _read_json_data(data: Any, path: Path, fmt: str, extra: bool) -> list[str]:
    if fmt == "coco" or (fmt == "json" and isinstance(data, dict) and "annotations" in data):
        return [a["caption"] for a in data["annotations"]]
    if fmt == "dci" or (fmt == "json" and isinstance(data, dict) and "short_caption" in data):
        return [_dci_prompt(data, path, extra)]
    if fmt == "mjhq" or (fmt == "json" and isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())):
        return [v["prompt"] for v in data.values() if v.get("prompt")]
    if isinstance(data, list):
        return _from_objects(data, path)
    raise ConfigError(f"{path}: unrecognised JSON prompt file (top-level {type(data).__name__}); give format=")


def _auto_format(path: Path) -> str:
    if path.is_dir():
        return "dci"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}.get(suffix, "lines")


def load_prompts(
    path: str | os.PathLike,
    limit: int | None = None,
    format: str = "auto",
    dci_extra_caption: bool = True,
) -> list[str]:
    """Prompts from ``path`` in file order, at most ``limit`` of them. See the module docstring."""
    path = Path(path)
    if format not in FORMATS:
        raise ConfigError(f"format: {format!r} is not valid; allowed: {', '.join(FORMATS)}")
    if not path.exists():
        raise ConfigError(f"prompt file {path} does not exist")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(f"limit: {limit!r} must be a non-negative integer or None")
    fmt = _auto_format(path) if format == "auto" else format
    if fmt == "lines":
        prompts = _read_lines(path)
    elif fmt in ("csv", "tsv"):
        prompts = _read_table(path, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        prompts = _from_objects([json.loads(line) for line in _read_lines(path)], path)
    elif fmt == "dci":
        prompts = _read_dci(path, dci_extra_caption)
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        try:
            prompts = _read_json_data(data, path, fmt, dci_extra_caption)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a {fmt} prompt file (missing or bad entry: {exc!r})") from None
    return prompts if limit is None else prompts[:limit]
