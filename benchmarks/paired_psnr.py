"""Paired image-PSNR differences between configs of one ``segquant eval`` report: mean ± standard error over the
images, per model (the same prompts and seeds on both sides, so the prompt-to-prompt spread cancels).

    python benchmarks/paired_psnr.py REPORT/results.json BASE:OTHER [BASE:OTHER ...]

A config is named as in the report's rows; a YAML preset by its file name without ``.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_backends

from demo_backends import paired_difference  # noqa: E402


def config_name(label: str) -> str:
    """``"path/to/x.yaml"`` -> ``"x"``; a preset name stays as it is."""
    return Path(label).name.removesuffix(".yaml")


def main(report: str, pairs: list[str]) -> None:
    models = json.loads(Path(report).read_text())["models"]
    print("| model | " + " | ".join(f"{other} − {base}" for base, other in (p.split(":") for p in pairs)) + " |")
    print("|---" * (len(pairs) + 1) + "|")
    for model, result in models.items():
        rows = {config_name(row["config"]): row["psnr_per_image"] for row in result["rows"] if "psnr_per_image" in row}
        cells = [paired_difference(rows[base], rows[other]) for base, other in (p.split(":") for p in pairs)]
        print(f"| {model} | " + " | ".join(f"{mean:+.2f} ± {error:.2f}" for mean, error in cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
