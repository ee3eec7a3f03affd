"""Margins of SegQuant's best preset over the best baseline, per model and bit width, from eval reports.

    python benchmarks/baselines_margins.py REPORT_DIR [REPORT_DIR ...] > margins.md

Each ``REPORT_DIR`` is a ``segquant eval ... --baselines ...`` output folder (``<model>/results.json``
inside, or a single model's folder). The rows of one model are pooled over all folders (a later folder's
measured row replaces an earlier row of the same config, e.g. a re-run of a baseline that failed); they
must come from the same prompts, seeds and calibration settings. Rows are grouped by bit width (presets by their name: ``w8a8*`` ->
W8A8, ``w4a8`` -> W4A8, ``w4a4`` -> W4A4, ``w4a16`` -> W4A16; baselines by their registry entry); within
each group the best PSNR of each side is compared (W8A16 baselines have no SegQuant counterpart).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from segquant.baselines import BASELINES


def bit_group(config: str) -> str | None:
    """``"W8A8"`` / ``"W4A8"`` / ``"W4A4"`` / ``"W4A16"`` ... for a preset or baseline label (FP8 counts as W8A8)."""
    if config in BASELINES:
        return BASELINES[config].bits.split(" ")[0]
    for prefix, group in (("w8a8", "W8A8"), ("w4a8", "W4A8"), ("w4a4", "W4A4"), ("w4a16", "W4A16")):
        if config.startswith(prefix):
            return group
    return None


def margins(rows: list[dict]) -> list[tuple[str, str, float, str, float, float]]:
    """``[(group, best preset, PSNR, best baseline, PSNR, margin dB)]`` for groups with both sides."""
    out = []
    for group in ("W8A8", "W4A8", "W4A4", "W4A16"):
        ok = [r for r in rows if "psnr" in r and r["psnr"] is not None and bit_group(r["config"]) == group]
        ours = [r for r in ok if r["config"] not in BASELINES]
        theirs = [r for r in ok if r["config"] in BASELINES]
        if ours and theirs:
            a, b = max(ours, key=lambda r: r["psnr"]), max(theirs, key=lambda r: r["psnr"])
            out.append((group, a["config"], a["psnr"], b["config"], b["psnr"], a["psnr"] - b["psnr"]))
    return out


def pooled_rows(folders: list[str]) -> dict[str, list[dict]]:
    """model -> its measured rows over all ``folders`` (a later measured row of a config replaces an earlier)."""
    by_model: dict[str, dict[str, dict]] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("**/results.json")):
            data = json.loads(path.read_text())
            rows = by_model.setdefault(path.parent.name, {})
            for row in data.get("rows", []):
                if row.get("psnr") is not None or row["config"] not in rows:
                    rows[row["config"]] = row
    return {model: list(rows.values()) for model, rows in by_model.items()}


def main(folders: list[str]) -> None:
    print("| model | bits | best SegQuant preset | PSNR dB | best baseline | PSNR dB | margin dB |")
    print("|---|---|---|---|---|---|---|")
    for model, rows in pooled_rows(folders).items():
        for group, a, pa, b, pb, m in margins(rows):
            print(f"| {model} | {group} | {a} | {pa:.2f} | {b} | {pb:.2f} | {m:+.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
