"""What applying a fitted per-step correction costs, against the denoiser call it corrects (issue 13: ≤ 1 %).

For each demo model and correction (affiner, PTQD, TAC), one generation with the correction applied through a
denoiser tap that times, per step, the denoiser call (with classifier-free guidance: both halves in one call)
and the correction's ``apply`` on its output. The correction is fitted with ``process_affiner`` against a
perturbed copy of the model standing in for a quantized one: the cost of applying it depends on the latent
shape and the method, not on the fitted values. TAC's input-bias part (one more elementwise add on the
denoiser input) is not in the timed ``apply``.

    PYTHONPATH=. python benchmarks/correction_cost.py --models mmdit,flux,unet --steps 10 --out results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from segquant.affiner import process_affiner
from segquant.demo.data import class_prompt
from segquant.demo.pipeline import load_demo_pipeline
from segquant.pipeline.glue import get_denoiser
from segquant.pipeline.tap import DenoiserTap

METHODS = ("affiner", "ptqd", "tac")


def perturbed_copy(model: torch.nn.Module, scale: float = 1e-2, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with every parameter moved by ``scale`` of its standard deviation (a stand-in for
    a quantized model)."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.float().std().nan_to_num(0.0))
    return other


def timed_generation(pipe, corr, prompts: list[str], steps: int) -> dict:
    """Seconds per step of the denoiser call and of ``corr.apply`` over one generation of ``prompts``."""
    denoiser_s, apply_s, starts = [], [], {}

    def before(call):
        starts["t"] = time.perf_counter()

    def after(call):
        denoiser_s.append(time.perf_counter() - starts["t"])
        t0 = time.perf_counter()
        sample = corr.apply(call.sample, call.info)
        apply_s.append(time.perf_counter() - t0)
        return call.with_sample(sample)

    with torch.inference_mode(), DenoiserTap(pipe, before=before, after=after):
        pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    return {"denoiser_ms": 1e3 * sorted(denoiser_s)[len(denoiser_s) // 2],
            "apply_ms": 1e3 * sorted(apply_s)[len(apply_s) // 2], "calls": len(apply_s)}


def measure(name: str, steps: int, batch: int) -> list[dict]:
    pipe = load_demo_pipeline(name)
    stand_in = perturbed_copy(get_denoiser(pipe)[1])
    prompts = [class_prompt(i % 10) for i in range(batch)]
    rows = []
    for method in METHODS:
        t0 = time.perf_counter()
        corr = process_affiner({"method": method, "num_inference_steps": steps, "batch_size": batch}, prompts,
                               pipe, stand_in, shuffle=False)
        fit_s = time.perf_counter() - t0
        row = {"model": name, "method": method, "fit_s": round(fit_s, 1), **timed_generation(pipe, corr, prompts,
                                                                                               steps)}
        row["apply_fraction"] = row["apply_ms"] / row["denoiser_ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mmdit,flux,unet")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4, help="prompts per pipeline call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for name in args.models.split(",") for row in measure(name, args.steps, args.batch)]
    print("| model | method | denoiser call ms | apply ms | apply / call | fit s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['denoiser_ms']:.2f} | {r['apply_ms']:.3f} | "
              f"{100 * r['apply_fraction']:.2f} % | {r['fit_s']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
