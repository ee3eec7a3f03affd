"""How much image PSNR a per-step correction can buy: an oracle that shrinks every step's error by a factor.

Issue 13 asks a per-step correction (affiner, PTQD, TAC) for +1 dB of image PSNR at W4A8 / W4A4. The affiner
lowers the held-out per-step error by up to 17 % yet moves PSNR by ≈ +0.1 dB (benchmarks/affiner_results.md).
This script measures the other side: during sampling, at every denoiser call, the full-precision denoiser runs
on the quantized trajectory's own input ``x`` and the output becomes ``fp(x) + f · (q(x) − fp(x))`` — the same
error, shrunk by ``f`` (``f = 1``: the quantized model; ``f = 0``: full precision). The per-step relative error
is then exactly ``f`` times the uncorrected one, so the table maps "per-step error lowered by 1 − f" to the image
PSNR it buys, the ceiling of any correction that lowers the per-step error that much in every direction.

Uses ``segquant demo``'s settings (same prompts, seeds, calibration; ``--per-class`` / ``--steps``):

    python benchmarks/correction_ceiling.py --models mmdit,flux,unet --presets w4a8,w4a4 --factors 1,0.9,0.83,0.7,0.5
    python benchmarks/correction_ceiling.py --against-affiner TABLE.md RUN/results.json ...   # the affiner beside it
    python benchmarks/correction_ceiling.py --shared-final-error --presets w4a8,w4a4 --per-class 4

``--shared-final-error`` asks the question from the other end: how much of the *final image's* error is shared by
all prompts? It subtracts the per-pixel mean error (quantized minus full-precision image, over prompts) from the
quantized images: fitted on the same images (an in-sample ceiling for any correction that adds the same thing to
every prompt's image) and on the other half of the prompts (even / odd, both ways; what a fit on other prompts
gets). The additive part ``b_t`` of a per-step correction reaches the end, to first order, as such an added image,
so this bounds what the bias terms of the affiner, PTQD and TAC can buy; their slope terms (``K_t ⊙ ε̂``) scale each
prompt's own prediction and are not bounded by it (the oracle above covers those).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant


def shrunk_error(fp: torch.nn.Module, factor: float, steps: range):
    """A tap's ``after``: at the denoising steps in ``steps``, the call's output replaced by
    ``fp(x) + factor · (q(x) − fp(x))``; left as it is at the others."""
    from segquant.pipeline.tap import output_sample

    def after(call):
        if call.info.step_index not in steps:
            return None
        reference = output_sample(call.run(fp))
        return call.with_sample(reference + factor * (call.sample - reference))

    return after


def mean_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    from segquant.eval.metrics import psnr

    return float(psnr(images, reference).mean())


def quantized_runs(name: str, presets: list[str], settings: dict):
    """For demo model ``name`` with ``segquant demo``'s ``settings``: ``(pipe, cfg, denoiser, fp, reference)`` (the
    full-precision images) and, lazily, ``(preset, quantized copy of fp)`` per preset, each calibrated alike."""
    from segquant.baselines.harness import quantize_entry
    from segquant.demo.cli import _load, demo_eval_config, demo_prompts
    from segquant.eval.harness import calibration_loader, generate_images
    from segquant.pipeline.glue import get_denoiser
    from segquant.presets import preset_dict

    prompts, labels, calib = demo_prompts(settings)
    pipe = _load(name, None, False)
    cfg = demo_eval_config(settings, prompts, labels, calib)
    denoiser, fp = get_denoiser(pipe)
    reference = generate_images(pipe, cfg, "fp", progress=False)
    loader = calibration_loader(pipe, denoiser, cfg, progress=False)
    models = ((preset, quantize_entry(copy.deepcopy(fp), loader, preset_dict(preset))) for preset in presets)
    return (pipe, cfg, denoiser, fp, reference), models


def ceiling(name: str, presets: list[str], factors: list[float], settings: dict, steps: range) -> None:
    """Print the table rows of one demo model: PSNR per preset and factor, the error shrunk at ``steps``."""
    from segquant.eval.harness import generate_images
    from segquant.pipeline.glue import swapped_denoiser
    from segquant.pipeline.tap import DenoiserTap

    (pipe, cfg, denoiser, fp, reference), models = quantized_runs(name, presets, settings)
    for preset, qmodel in models:
        base = None
        for factor in factors:
            with swapped_denoiser(pipe, qmodel, denoiser):  # the tap goes on the quantized denoiser
                with DenoiserTap(pipe, denoiser, after=shrunk_error(fp, factor, steps)):
                    images = generate_images(pipe, cfg, f"{preset} f={factor}", progress=False)
            value = mean_psnr(images, reference)
            base = value if base is None else base
            print(f"| {name} | {preset} | {steps.start}..{steps.stop - 1} | {factor:g} | {value:.2f} | "
                  f"{value - base:+.2f} |", flush=True)


def shared_error_gains(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """PSNR gains (dB) of ``images`` ``(N, C, H, W)`` in [0, 1] with the per-pixel mean error over prompts removed
    (clamped to [0, 1]): fitted on all ``N`` (in-sample) and, held out, on the even prompts for the odd ones and the
    reverse (mean over all ``N``)."""
    base = mean_psnr(images, reference)
    error = images - reference
    in_sample = mean_psnr((images - error.mean(0)).clamp(0, 1), reference)
    held_out = images.clone()
    for fit, apply in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        held_out[apply] = (images[apply] - error[fit].mean(0)).clamp(0, 1)
    return in_sample - base, mean_psnr(held_out, reference) - base


def shared_final_error(name: str, presets: list[str], settings: dict) -> None:
    """Print one demo model's rows: PSNR per preset and the gains of :func:`shared_error_gains`."""
    from segquant.eval.harness import generate_images
    from segquant.pipeline.glue import swapped_denoiser

    (pipe, cfg, denoiser, _, reference), models = quantized_runs(name, presets, settings)
    for preset, qmodel in models:
        with swapped_denoiser(pipe, qmodel, denoiser):
            images = generate_images(pipe, cfg, preset, progress=False)
        in_sample, held_out = shared_error_gains(images, reference)
        print(f"| {name} | {preset} | {len(images)} | {mean_psnr(images, reference):.2f} | {in_sample:+.2f} | "
              f"{held_out:+.2f} |", flush=True)


def oracle_curves(table: Path) -> dict:
    """``{(model, preset): [(f, gain dB), ...]}`` from this script's printed table (shrunk at every step)."""
    curves: dict = {}
    for line in table.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("mmdit", "flux", "unet"):
            curves.setdefault((cells[0], cells[1]), []).append((float(cells[3]), float(cells[5])))
    return {key: sorted(points) for key, points in curves.items()}


def oracle_gain(points: list, factor: float) -> float:
    """The oracle's gain at ``factor``, linear between measured factors (beyond them: the nearest segment)."""
    segments = list(zip(points, points[1:]))
    (f0, g0), (f1, g1) = next(((a, b) for a, b in segments if a[0] <= factor <= b[0]),
                              segments[0] if factor < points[0][0] else segments[-1])
    return g0 + (g1 - g0) * (factor - f0) / (f1 - f0)


def against_affiner(table: Path, runs: list[Path], presets: list[str]) -> None:
    """Each ``segquant eval --correction affiner`` run's per-step error reduction over all steps but the last,
    the oracle's gain at that reduction, and the affiner's measured gain."""
    import json
    import statistics

    curves = oracle_curves(table)
    cells: dict = {preset: [] for preset in presets}
    print("| model | preset | seed | per-step error lower, all steps | steps 0..n-2 | oracle gain there "
          "| affiner's gain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path in runs:
        run = json.loads(path.read_text())
        for model, result in run["models"].items():
            errors, rows = result["step_errors"], {r["config"]: r for r in result["rows"]}
            for preset in presets:
                none, fixed = errors[preset], errors[f"{preset}+affiner"]
                factor = statistics.mean(fixed[:-1]) / statistics.mean(none[:-1])
                gain = rows[f"{preset}+affiner"]["psnr"] - rows[preset]["psnr"]
                cell = (1 - statistics.mean(fixed) / statistics.mean(none), 1 - factor,
                        oracle_gain(curves[model, preset], factor), gain)
                cells[preset].append(cell)
                print(f"| {model} | {preset} | {run['settings']['seed']} | " + _cells(cell))
    for preset, rows_of_preset in cells.items():
        print(f"| mean | {preset} | | " + _cells(tuple(statistics.mean(c) for c in zip(*rows_of_preset))))


def _cells(cell: tuple) -> str:
    """``(lower all steps, lower but last, oracle gain, affiner gain)`` as the table's last four cells."""
    return f"{100 * cell[0]:.1f} % | {100 * cell[1]:.1f} % | {cell[2]:+.2f} | {cell[3]:+.2f} |"


def main() -> None:
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mmdit,flux,unet")
    parser.add_argument("--presets", default="w4a8,w4a4")
    parser.add_argument("--factors", default="1,0.9,0.83,0.7,0.5", help="error factors f; the first is the baseline")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--shrink-steps", default=":",
                        help="the step indices shrunk, a Python slice (`:`, `:-1`, `-1:`)")
    parser.add_argument("--against-affiner", nargs="+", type=Path, metavar="FILE",
                        help="no generation: this script's saved table, then affiner runs' results.json")
    parser.add_argument("--shared-final-error", action="store_true",
                        help="the final images' error shared by all prompts, instead of the oracle (module doc)")
    opts = parser.parse_args()
    if opts.against_affiner:
        against_affiner(opts.against_affiner[0], opts.against_affiner[1:], opts.presets.split(","))
        return
    args = build_parser().parse_args(["demo", "--per-class", str(opts.per_class), "--steps", str(opts.steps),
                                      "--no-fid"])
    settings = demo_settings(args)
    if opts.shared_final_error:
        print("| model | preset | images | PSNR dB | mean error removed, in-sample | fitted on the other half |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in opts.models.split(","):
            shared_final_error(name, opts.presets.split(","), settings)
        return
    factors = [float(f) for f in opts.factors.split(",")]
    steps = range(opts.steps)[slice(*(int(p) if p else None for p in opts.shrink_steps.split(":")))]
    print(f"| model | preset | steps shrunk | error factor f | PSNR dB | vs f = {factors[0]:g} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in opts.models.split(","):
        ceiling(name, opts.presets.split(","), factors, settings, steps)


if __name__ == "__main__":
    main()
