"""``segquant dataset canny``: (prompt, image, Canny edge map) triples for ControlNet calibration/eval.

Example (COCO val2017 with ``annotations/captions_val2017.json`` and ``val2017/``)::

    segquant dataset canny ./coco --out control/coco-canny-512 --resolution 512 --limit 5000

Sources: COCO, MJHQ-30K, DCI and the SegQuant reference pre-processed layout (detected, or
``--layout``). Edges: centre crop + resize to ``--resolution``, then ``cv2.Canny(grey, low, high)``
(defaults 100 / 200, no blur). An interrupted run resumes; unreadable images are listed and skipped.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_dataset_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dataset`` (with its ``canny`` subcommand) to an ``argparse`` subparsers object."""
    from segquant.data.canny import DEFAULT_HIGH, DEFAULT_LOW
    from segquant.data.sources import LAYOUTS

    p = subparsers.add_parser("dataset", help="build data sets (Canny control triples)")
    sub = p.add_subparsers(dest="dataset_command", metavar="kind", required=True)
    c = sub.add_parser("canny", help="write (prompt, image, Canny edge map) triples", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("source", help="dataset folder (COCO / MJHQ-30K / DCI / SegQuant layout) or COCO captions JSON")
    c.add_argument("--out", required=True, help="output folder (resumed when it holds an unfinished build)")
    c.add_argument("--layout", choices=LAYOUTS, default="auto")
    c.add_argument("--images", default=None, help="COCO: image folder, when not beside the captions JSON")
    c.add_argument("--resolution", type=int, default=512, help="square output size in px (default: 512)")
    c.add_argument("--limit", type=int, default=None, help="use the first N source items")
    c.add_argument("--low", type=int, default=DEFAULT_LOW, help=f"Canny low threshold (default: {DEFAULT_LOW})")
    c.add_argument("--high", type=int, default=DEFAULT_HIGH, help=f"Canny high threshold (default: {DEFAULT_HIGH})")
    c.add_argument("--blur", type=int, default=0, help="odd Gaussian blur kernel before Canny (0 = none)")
    c.add_argument("--workers", type=int, default=2, help="threads (default: 2)")
    c.add_argument("--overwrite", action="store_true", help="replace a folder built with other settings")
    c.set_defaults(func=run_canny)
    return p


def run_canny(args: argparse.Namespace) -> int:
    """Run ``segquant dataset canny``; returns 1 when no triple could be written, else 0."""
    from segquant.data.canny import CannySettings
    from segquant.data.control import build_canny_dataset

    settings = CannySettings(resolution=args.resolution, low=args.low, high=args.high, blur_kernel=args.blur)
    t0 = time.perf_counter()
    report = build_canny_dataset(args.source, args.out, layout=args.layout, settings=settings, limit=args.limit,
                                 image_dir=args.images, workers=args.workers, overwrite=args.overwrite)
    for key, reason in report.skipped[:20]:
        print(f"skipped {key}: {reason}")
    if len(report.skipped) > 20:
        print(f"... and {len(report.skipped) - 20} more (all in {args.out}/progress.jsonl)")
    print(f"{report.done} triples in {args.out} ({report.new} new, {len(report.skipped)} skipped, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0 if report.done else 1
