"""What one smoothing shared by the q / k / v projections costs in demo image PSNR (issue 11's elementwise cost).

Each of ``to_q``, ``to_k``, ``to_v`` reads the same normalized tensor, but with its own SmoothQuant factors
``λ`` (and static input scale) every layer quantizes that tensor itself: on the GPU the fused norm + quantize
kernel writes one 8-bit copy per layer and three GEMMs read them. With one ``λ`` for the three (SmoothQuant's
original placement, folded into the norm) the tensor is quantized once and the three projections are one GEMM.

On the denoiser with fused projections (:func:`segquant.fuse_projections`) this runs ``segquant demo``'s harness
with each preset twice, in one call (same prompts, seeds, calibration and full-precision images): as it is — the
split of the fused output makes q / k / v output segments with their own ``λ`` (``linear_to_chunk`` /
``linear_to_split``), the numerics of the unfused model — and with the fused layers kept whole (one ``λ``, one
input scale), once more with that one ``λ``'s alpha searched, and prints the paired PSNR differences:

    python benchmarks/shared_smoothing.py --models mmdit,flux,unet --presets w8a8,w8a8_static --per-class 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_backends
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from demo_backends import paired_difference  # noqa: E402
from segquant.models.fusion import fuse_projections  # noqa: E402


#: label suffix -> the fused layers' config: a λ per projection (output segments), one λ, one λ with alpha searched.
VARIANTS = {"": None, "_shared": False, "_shared_search": True}
SEARCHED_ALPHA = {"opt": {"search_alpha_config": {"enable": True, "min": 0.0, "max": 1.0, "step": 0.1}}}


def whole_fused_config(preset: dict, rules: dict, search_alpha: bool) -> dict:
    """``preset`` with the fused layers kept whole (``rules`` from :func:`fuse_projections`), their SmoothQuant alpha
    searched on 0, 0.1, ..., 1 if ``search_alpha``."""
    extra = SEARCHED_ALPHA if search_alpha else {}
    return {**preset, **{rule: {**config, **extra} for rule, config in rules.items()}}


def variant_psnr(model: str, presets: list[str], settings: dict, out: Path) -> dict[str, list]:
    """``{preset + suffix: per-image PSNR}`` for each preset and :data:`VARIANTS` suffix on ``model``."""
    from segquant.demo.classifier import load_classifier
    from segquant.demo.cli import demo_eval_config, demo_prompts
    from segquant.demo.pipeline import WEIGHTS_DIR, load_demo_pipeline
    from segquant.eval.harness import evaluate
    from segquant.eval.report import write_report
    from segquant.pipeline.glue import get_denoiser
    from segquant.presets import preset_dict

    pipe = load_demo_pipeline(model)
    denoiser = get_denoiser(pipe, None)[1]
    prompts, labels, calib = demo_prompts(settings)
    one_step = lambda: pipe(calib[0], num_inference_steps=1, generator=torch.Generator().manual_seed(0))  # noqa: E731
    rules = fuse_projections(denoiser, one_step)
    cfg = demo_eval_config(settings, prompts, labels, calib, classifier=load_classifier(WEIGHTS_DIR / "classifier"))
    entries = [(preset + suffix, preset_dict(preset) if search is None
                else whole_fused_config(preset_dict(preset), rules, search_alpha=search))
               for preset in presets for suffix, search in VARIANTS.items()]
    result = evaluate(pipe, entries, cfg, progress=False)
    write_report(result, out / model, title=f"{model}, q/k/v fused")
    return {row["config"]: row.get("psnr_per_image") for row in result.rows}


def main() -> None:
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mmdit,flux,unet")
    parser.add_argument("--presets", default="w8a8,w8a8_static")
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("shared_smoothing_out"))
    opts = parser.parse_args()
    settings = demo_settings(build_parser().parse_args(
        ["demo", "--per-class", str(opts.per_class), "--steps", "10", "--no-fid", "--presets", opts.presets]))
    print("| model | preset | images | PSNR, λ per q / k / v | one λ: PSNR | Δ dB (s.e.) | one λ, alpha searched: "
          "PSNR | Δ dB (s.e.) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in opts.models.split(","):
        psnr = variant_psnr(model, opts.presets.split(","), settings, opts.out)
        for preset in opts.presets.split(","):
            rows = [psnr.get(preset + suffix) for suffix in VARIANTS]
            if any(row is None for row in rows):
                print(f"| {model} | {preset} | failed: see {opts.out / model} | | | | | |", flush=True)
                continue
            cells = []
            for row in rows[1:]:
                delta, error = paired_difference(rows[0], row)
                cells += [f"{statistics.mean(row):.3f}", f"{delta:+.3f} ({error:.3f})"]
            print(f"| {model} | {preset} | {len(rows[0])} | {statistics.mean(rows[0]):.3f} | {' | '.join(cells)} |",
                  flush=True)


if __name__ == "__main__":
    main()
