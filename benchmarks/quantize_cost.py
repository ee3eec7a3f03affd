"""Calibration + quantization time and peak memory of quantize() on CPU.

Cases: the tiny SD3 / FLUX / UNet testbeds, and one full-size SD3.5-medium joint transformer block
(dim 1536, 24 heads x 64, RMS qk-norm, dual attention) on 1024 image + 333 text tokens (a 512x512
image), random weights. Each case runs in its own subprocess so its peak RSS is its own.

    python benchmarks/quantize_cost.py [--presets w8a8 w4a8] [--batches 2]
    python benchmarks/quantize_cost.py --factor 1536 6144   # GPTQ inverse-Hessian factor, old vs new

``--cases sd35_full`` (CUDA): the whole SD3.5-medium transformer, random bf16 weights, ``--batches`` calibration
batches of two 1024² latents (4096 + 333 tokens) each, quantized with ``tmp_device="cuda"``.

``--factor`` times, in one process on the same damped random Hessians, the upper Cholesky factor of
``H⁻¹`` as GPTQ computes it (a flipped Cholesky and one triangular solve) against the former
``cholesky(cholesky_inverse(cholesky(H)), upper=True)``, and their relative difference.
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

CASES = ("sd3", "flux", "unet", "sd35_block")
GPU_CASES = ("sd35_full",)  # the whole SD3.5-medium transformer (random bf16 weights) on CUDA, tmp_device cuda


def build(case: str, batches: int):
    import torch

    if case == "sd35_full":
        from fullsize import SD35_MEDIUM, sd35_inputs
        from fullsize import build as build_full

        model, _ = build_full("sd35")
        torch.manual_seed(1)
        return model, [sd35_inputs(SD35_MEDIUM, "cuda", torch.bfloat16) for _ in range(batches)]
    if case != "sd35_block":
        from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs

        return build_tiny_denoiser(case), [tiny_example_inputs(case, batch=2, seed=s) for s in range(batches)]
    from diffusers.models.attention import JointTransformerBlock

    torch.manual_seed(0)
    block = JointTransformerBlock(dim=1536, num_attention_heads=24, attention_head_dim=64, context_pre_only=False,
                                  qk_norm="rms_norm", use_dual_attention=True).eval()
    data = [{"hidden_states": torch.randn(1, 1024, 1536), "encoder_hidden_states": torch.randn(1, 333, 1536),
             "temb": torch.randn(1, 1536)} for _ in range(batches)]
    return block, data


def run_case(case: str, preset: str, batches: int) -> dict:
    from segquant import quantize

    import torch

    gpu = case in GPU_CASES
    if gpu:  # stage times and layer progress on stderr: a run cut short still shows how far it got
        import logging

        logging.basicConfig(level=logging.INFO, format="[%(relativeCreated)9.0f ms] %(name)s: %(message)s")
        log_layer_progress()
    model, data = build(case, batches)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    quantized = quantize(model, data, preset, tmp_device="cuda" if gpu else None)
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"case": case, "preset": preset, "batches": batches, "seconds": round(seconds, 2),
            "layers": len(quantized.segquant_plan.enabled_layers()),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_mib": round(rss_before),
            "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20) if gpu else None}


def log_layer_progress(every: int = 10) -> None:
    """Log every ``every``-th converted layer (wraps ``segquant.conversion.quantize_linear``)."""
    import logging

    from segquant import conversion

    convert_one, done = conversion.quantize_linear, {"layers": 0}

    def counted(*args, **kwargs):
        result = convert_one(*args, **kwargs)
        done["layers"] += 1
        if done["layers"] % every == 0:
            logging.getLogger("quantize_cost").info("%d layers converted", done["layers"])
        return result

    conversion.quantize_linear = counted


def time_factor(k: int) -> dict:
    """Seconds of the new and the former inverse-Hessian factor for a ``(k, k)`` Hessian (float32)."""
    import torch

    from segquant.algorithms.gptq import _inverse_hessian_cholesky

    torch.manual_seed(0)
    x = torch.randn(2 * k, k)
    h = 2 * x.T @ x / x.shape[0]
    start = time.perf_counter()
    new = _inverse_hessian_cholesky(h, 0.01)
    new_s = time.perf_counter() - start
    start = time.perf_counter()
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(k)
    old = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)
    old_s = time.perf_counter() - start
    return {"k": k, "new_s": round(new_s, 2), "old_s": round(old_s, 2),
            "rel_diff": float((new - old).norm() / old.norm())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["w8a8", "w4a8"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES + GPU_CASES)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--factor", nargs="+", type=int, help="time the GPTQ factor at these Hessian sizes")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.factor:
        print("| K | new factor (s) | cholesky_inverse + cholesky (s) | relative difference |")
        print("| --- | --- | --- | --- |")
        for k in args.factor:
            r = time_factor(k)
            print(f"| {k} | {r['new_s']} | {r['old_s']} | {r['rel_diff']:.1e} |", flush=True)
        return
    if args.child:
        print(json.dumps(run_case(args.child[0], args.child[1], args.batches)))
        return
    print("| case | preset | calib batches | layers | time (s) | peak RSS (MiB) | RSS after build (MiB) | "
          "GPU peak (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in args.cases:
        for preset in args.presets:
            out = subprocess.run([sys.executable, __file__, "--child", case, preset, "--batches", str(args.batches)],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"| {r['case']} | {r['preset']} | {r['batches']} | {r['layers']} | {r['seconds']} | "
                  f"{r['peak_rss_mib']} | {r['rss_before_mib']} | {r['gpu_peak_mib'] or '–'} |", flush=True)


if __name__ == "__main__":
    main()
