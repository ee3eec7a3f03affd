"""Peak host memory of ``load_quantized(folder)`` (no model given) against the checkpoint size.

Builds a mid-size SD3-style diffusers transformer on the CPU (SD3.5-medium width: 24 heads x 64, with
``--layers`` joint blocks, random weights), quantizes it at W4A8 (``rtn_w4a8``: INT4 per-group(64)
packed weights, INT8 static inputs; the checkpoint layout is that of every W4A8 preset) on one small
calibration batch, saves it, then loads it in a fresh subprocess and reports its peak RSS
(``resource.getrusage``): before loading (after imports) and after ``load_quantized`` and a read of one
byte per KiB of every tensor (file-backed pages count once touched).

    python benchmarks/load_memory.py [--layers 6] [--dir /tmp/segquant_load_memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant, not an installed one

def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_and_save(folder: Path, layers: int) -> None:
    import torch
    from diffusers import SD3Transformer2DModel

    from segquant import quantize, save_quantized

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=layers,
                                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                  caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                  pos_embed_max_size=96, qk_norm="rms_norm").eval()
    batch = {"hidden_states": torch.randn(1, 16, 32, 32), "encoder_hidden_states": torch.randn(1, 77, 4096),
             "pooled_projections": torch.randn(1, 2048), "timestep": torch.tensor([500.0])}
    save_quantized(quantize(model, [batch], "rtn_w4a8"), folder)


def load_child(folder: Path) -> dict:
    import torch

    import segquant
    import diffusers  # noqa: F401  (imports counted in the baseline, not in the load)

    before = _rss_mib()
    start = time.perf_counter()
    model = segquant.load_quantized(folder)
    seconds = time.perf_counter() - start
    # Tensors read from the file may stay backed by its pages until touched: read one byte of every KiB.
    for tensor in model.state_dict().values():
        tensor.detach().reshape(-1).view(torch.uint8)[::1024].sum()
    return {"rss_before_mib": round(before), "peak_rss_mib": round(_rss_mib()), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/segquant_load_memory"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.dir / f"sd3_{args.layers}_w4a8"
    if args.child:
        print(json.dumps(load_child(folder)))
        return
    if args.build:
        build_and_save(folder, args.layers)
        return
    if not (folder / "segquant_manifest.json").is_file():
        subprocess.run([sys.executable, __file__, "--build", "--layers", str(args.layers), "--dir", str(args.dir)],
                       check=True)
    size_mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    out = subprocess.run([sys.executable, __file__, "--child", "--layers", str(args.layers), "--dir", str(args.dir)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    added = r["peak_rss_mib"] - r["rss_before_mib"]
    print("| layers | checkpoint (MiB) | RSS before load (MiB) | peak RSS (MiB) | added by load (MiB) | "
          "added / checkpoint | peak / checkpoint | load time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.layers} | {size_mib:.0f} | {r['rss_before_mib']} | {r['peak_rss_mib']} | {added} | "
          f"{added / size_mib:.2f}x | {r['peak_rss_mib'] / size_mib:.2f}x | {r['seconds']} |")


if __name__ == "__main__":
    main()
