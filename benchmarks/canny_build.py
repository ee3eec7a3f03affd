"""Canny control data: how long does ``build_canny_dataset`` take for 1000 COCO-sized images?

Target (issue 15): 1000 images in <= 60 s on the 2-core CPU. The source is a synthetic COCO folder
(captions JSON + ``val2017/``) of ``--n`` JPEGs of 640 x 480 (COCO's usual size; quality 90) with
random blobs, lines and noise, written before the clock starts. The timed part is the whole build
(decode, centre crop + resize to ``--resolution``, Canny 100/200, JPEG + PNG writes, progress log,
metadata), once per ``--workers`` value.

Usage: python benchmarks/canny_build.py [--n 1000] [--resolution 512] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_source(root: Path, n: int, seed: int = 0) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
        img = cv2.resize(img, (640, 480), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            p1, p2 = tuple(int(v) for v in rng.integers(0, 640, 2)), tuple(int(v) for v in rng.integers(0, 480, 2))
            cv2.line(img, p1, p2, tuple(int(v) for v in rng.integers(0, 255, 3)), int(rng.integers(1, 6)))
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / "val2017" / name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i, "file_name": name})
        anns.append({"id": i, "image_id": i, "caption": f"synthetic picture {i}"})
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()

    import cv2

    from segquant.data.canny import CannySettings
    from segquant.data.control import build_canny_dataset

    with tempfile.TemporaryDirectory() as tmp:
        src = make_source(Path(tmp) / "coco", args.n)
        print(f"opencv {cv2.__version__}, {args.n} source JPEGs 640x480, resolution {args.resolution}")
        for workers in (int(w) for w in args.workers.split(",")):
            out = Path(tmp) / f"out{workers}"
            t0 = time.perf_counter()
            report = build_canny_dataset(src, out, settings=CannySettings(resolution=args.resolution),
                                         workers=workers, progress=False)
            seconds = time.perf_counter() - t0
            print(f"workers={workers}: {report.done} triples in {seconds:.1f} s "
                  f"({report.done / seconds:.0f} images/s, {len(report.skipped)} skipped)")


if __name__ == "__main__":
    main()
