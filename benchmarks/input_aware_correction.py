"""Image PSNR of a per-step correction that also sees the denoiser's input: ``ε' = K ε̂ + C x_t + b`` (issue 13).

``correction_regressors.py`` found that, fitted on 32 prompts, adding the denoiser input ``x_t`` as a second
regressor lowers the held-out per-step error more than the affiner's ``K ε̂ + b`` (UNet W4A8: 13.4 % against
10.3 %). Per-step error is a poor guide to image PSNR here (BENCHMARKS.md, "Per-step corrections"), so this
script measures the images: a third-party corrector (``process_affiner(thirdparty_affiner=...)``, fitted
recurrently in lockstep like the affiner) with either regressor set, per step and latent element, by pooled ridge
least squares (ridge toward ``K = 1``, ``C = b = 0``), against no correction and the stock affiner, on
``segquant demo``'s evaluation prompts, seeds and calibration:

    python benchmarks/input_aware_correction.py --models unet,flux --presets w4a8 --per-class 3 --calib-prompts 32
    python benchmarks/input_aware_correction.py --models mmdit,flux,unet --presets w4a8 --seed 1   # and 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # correction_regressors
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from correction_regressors import design, main_input, ridge_solve  # noqa: E402


class LinearCorrector:
    """Per step and latent element, ``ε' = Σ_p coef_p · regressor_p + b`` (regressors: ``"q"`` = ε̂, ``"x"`` = the
    denoiser input), fitted by ridge least squares pooled over every row of the step's calls.

    The fit/apply protocol of :mod:`segquant.affiner.base`, plus ``install(pipe)`` (generation needs the input,
    which a stepper is not given). In recurrent fitting ``apply`` follows ``fit`` on the same call and uses the
    input that ``fit`` saw."""

    def __init__(self, regressors: tuple[str, ...], ridge: float):
        self.regressors, self.ridge = regressors, ridge
        self.gram: dict[int, torch.Tensor] = {}  # step -> (E, P+1, P+1)
        self.rhs: dict[int, torch.Tensor] = {}  # step -> (E, P+1)
        self.rows: dict[int, int] = {}
        self.coef: dict[int, torch.Tensor] = {}  # step -> (E, P+1)
        self._last_input: torch.Tensor | None = None

    def fit(self, pred_q: torch.Tensor, pred_fp: torch.Tensor, info, inputs: dict | None = None) -> None:
        step, x = info.step_index, main_input(inputs)
        self._last_input = x
        a = design({"q": pred_q, "x": x}, self.regressors)
        self.gram[step] = torch.einsum("rep,req->epq", a, a) + self.gram.get(step, 0)
        self.rhs[step] = torch.einsum("rep,re->ep", a, pred_fp.double().flatten(1)) + self.rhs.get(step, 0)
        self.rows[step] = self.rows.get(step, 0) + a.shape[0]
        self.coef[step] = ridge_solve(self.gram[step], self.rhs[step], self.rows[step], self.ridge)

    def finish(self, num_steps: int) -> None:
        self.gram.clear()
        self.rhs.clear()

    def corrected(self, pred_q: torch.Tensor, x: torch.Tensor, step: int) -> torch.Tensor:
        if step not in self.coef:
            return pred_q
        out = torch.einsum("rep,ep->re", design({"q": pred_q, "x": x}, self.regressors), self.coef[step])
        return out.reshape(pred_q.shape).to(pred_q.dtype)

    def apply(self, pred_q: torch.Tensor, info) -> torch.Tensor:
        return self.corrected(pred_q, self._last_input, info.step_index)

    @contextlib.contextmanager
    def install(self, pipe):
        from segquant.pipeline.tap import DenoiserTap

        def after(call):
            return call.with_sample(self.corrected(call.sample, main_input(call.inputs), call.info.step_index))

        with DenoiserTap(pipe, after=after):
            yield


def psnr_rows(name: str, preset: str, settings: dict, ridge: float) -> dict[str, float]:
    """Mean image PSNR vs full precision: uncorrected, the stock affiner, and both :class:`LinearCorrector` forms."""
    from segquant.affiner import installed, process_affiner
    from segquant.baselines.harness import quantize_entry
    from segquant.demo.cli import _load, demo_eval_config, demo_prompts
    from segquant.eval.corrections import fit_correction
    from segquant.eval.harness import calibration_loader, generate_images
    from segquant.eval.metrics import psnr
    from segquant.pipeline.glue import get_denoiser, swapped_denoiser
    from segquant.presets import preset_dict

    prompts, labels, calib = demo_prompts(settings)
    pipe = _load(name, None, False)
    cfg = demo_eval_config(settings, prompts, labels, calib)
    denoiser, fp = get_denoiser(pipe)
    reference = generate_images(pipe, cfg, "fp", progress=False)
    qmodel = quantize_entry(copy.deepcopy(fp), calibration_loader(pipe, denoiser, cfg, progress=False),
                            preset_dict(preset))
    corrections = {"none": None, "affiner": fit_correction(pipe, qmodel, "affiner", cfg)[0]}
    fit_config = {"method": "affiner", "num_inference_steps": cfg.num_inference_steps,
                  "guidance_scale": cfg.guidance_scale, "batch_size": max(1, cfg.calib_batch_size),
                  "seed": cfg.seed + 200_000, "pipeline_kwargs": dict(cfg.pipeline_kwargs)}
    for label, regressors in (("K ε̂ + b", ("q",)), ("K ε̂ + C x + b", ("q", "x"))):
        corrections[label] = process_affiner(fit_config, list(calib), pipe, qmodel, shuffle=False,
                                             thirdparty_affiner=LinearCorrector(regressors, ridge))
    rows = {}
    for label, correction in corrections.items():
        with swapped_denoiser(pipe, qmodel, denoiser), installed(pipe, correction):
            images = generate_images(pipe, cfg, label, progress=False)
        rows[label] = float(psnr(images, reference).mean())
    return rows


def main() -> None:
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="unet,flux")
    parser.add_argument("--presets", default="w4a8")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--calib-prompts", type=int, default=32)
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge per fitted row")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (calibration prompts: seed + 1)")
    opts = parser.parse_args()
    settings = demo_settings(build_parser().parse_args(
        ["demo", "--per-class", str(opts.per_class), "--steps", str(opts.steps), "--calib-prompts",
         str(opts.calib_prompts), "--seed", str(opts.seed), "--no-fid"]))
    header = None
    for name in opts.models.split(","):
        for preset in opts.presets.split(","):
            rows = psnr_rows(name, preset, settings, opts.ridge)
            if header is None:
                header = list(rows)
                print("| model | preset | " + " | ".join(f"PSNR {label}" for label in header) + " |")
                print("| --- | --- | " + " | ".join("---" for _ in header) + " |")
            base = rows["none"]
            print(f"| {name} | {preset} | " + " | ".join(
                f"{v:.2f}" + ("" if k == "none" else f" ({v - base:+.2f})") for k, v in rows.items()) + " |",
                flush=True)


if __name__ == "__main__":
    main()
