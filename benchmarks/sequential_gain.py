"""When does sequential calibration help? Denoiser-output SQNR vs full precision, plain and sequential.

Tiny random SD3 / FLUX / UNet testbeds, 4 calibration batches of 2, a held-out batch for scoring.

    python benchmarks/sequential_gain.py [--presets rtn_w8a8 w8a8 w4a8 w4a4]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from segquant import preset_dict, quantize
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).mean() / (approx - reference).pow(2).mean()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["sd3", "flux", "unet"])
    parser.add_argument("--presets", nargs="+", default=["rtn_w8a8", "w8a8", "w4a8", "w4a4"])
    parser.add_argument("--low-rank", type=int, default=2,
                        help="rank of SVD presets: tiny layers have <= 64 features, rank 32 would keep them whole")
    args = parser.parse_args()
    print("| model | preset | SQNR plain (dB) | SQNR sequential (dB) | time plain (s) | time sequential (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model = build_tiny_denoiser(name)
        data = [tiny_example_inputs(name, batch=2, seed=s) for s in range(4)]
        held_out = tiny_example_inputs(name, batch=2, seed=99)
        with torch.no_grad():
            reference = model(**held_out)[0]
        for preset in args.presets:
            row = []
            for sequential in (False, True):
                config = preset_dict(preset)
                config["default"].setdefault("calib", {})["sequential"] = sequential
                if config["default"].get("opt", {}).get("type") == "svd":
                    config["default"]["opt"] = {**config["default"]["opt"], "low_rank": args.low_rank}
                start = time.perf_counter()
                quantized = quantize(copy.deepcopy(model), data, config)
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    row.append((sqnr_db(reference, quantized(**held_out)[0]), seconds))
            print(f"| {name} | {preset} | {row[0][0]:.2f} | {row[1][0]:.2f} | {row[0][1]:.1f} | {row[1][1]:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
