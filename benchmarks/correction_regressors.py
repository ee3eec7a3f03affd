"""Would a per-step correction that also sees the denoiser's input ``x_t`` lower the per-step error enough? (issue 13)

The affiner fits, per step and latent element, ``ε' = K ε̂ + b`` over all prompts. The oracle
(``correction_ceiling.py``) says +1 dB of image PSNR needs the per-step error 10-15 % lower at every step but the
last; the affiner lowers it ≈ 8 % at W4A8. This script asks, before any change to the affiner, whether a second
regressor helps: ``ε' = K ε̂ + C x_t + b`` per element (``x_t`` the quantized trajectory's latent at that call),
fitted by the same pooled ridge least squares. It records ``(x_t, ε̂, ε)`` along the uncorrected quantized
trajectory (``ε``: the full-precision denoiser on the same input) for the calibration prompts (fit) and the
evaluation prompts (held out), and prints the held-out per-step error reduction of both forms, and of the affiner's
form plus a channel-mixing matrix per step (:data:`CHANNEL_MIX`).

    python benchmarks/correction_regressors.py --models mmdit,flux,unet --presets w4a8,w4a4 --per-class 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

#: Regressor sets compared: the affiner's, and the affiner's with the denoiser input added.
AFFINE = "K ε̂ + b"
FORMS = {AFFINE: ("q",), "K ε̂ + C x + b": ("q", "x")}
#: The affiner's form plus one channel-mixing matrix per step, ``M ε̂`` (``C × C`` over the latent channels, shared
#: by every position), fitted on the affiner's held-in residual: error the quantized output spreads across channels.
CHANNEL_MIX = "K ε̂ + b + M ε̂"


def channels_first(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H·W)``; FLUX's packed ``(B, S, F)`` -> ``(B, F, S)`` (its F packed features
    are the channels)."""
    return t.flatten(2) if t.dim() == 4 else t.transpose(1, 2)


def main_input(inputs: dict) -> torch.Tensor:
    """The denoiser's latent input (``hidden_states`` for transformers, ``sample`` for a UNet)."""
    return inputs["hidden_states"] if "hidden_states" in inputs else inputs["sample"]


def record(pipe, cfg, qmodel, fp, denoiser: str, prompts: list[str]) -> dict[int, dict[str, torch.Tensor]]:
    """``{step: {"x", "q", "fp"}}``, each ``(rows, elements)`` float64, along the quantized trajectory of
    ``prompts`` (all calls of a step, CFG rows included)."""
    from dataclasses import replace

    from segquant.eval.harness import generate_images
    from segquant.pipeline.glue import swapped_denoiser
    from segquant.pipeline.tap import DenoiserTap, output_sample

    steps: dict[int, dict[str, list]] = {}

    def keep(call):
        entry = steps.setdefault(call.info.step_index, {"x": [], "q": [], "fp": []})
        for key, value in (("x", main_input(call.inputs)), ("q", call.sample), ("fp", output_sample(call.run(fp)))):
            entry[key].append(channels_first(value.detach().double()).flatten(1))
        entry["channels"] = channels_first(call.sample).shape[1]

    with swapped_denoiser(pipe, qmodel, denoiser), DenoiserTap(pipe, denoiser, after=keep):
        generate_images(pipe, replace(cfg, prompts=prompts, labels=None), "record", progress=False)
    return {step: {k: v if k == "channels" else torch.cat(v) for k, v in entry.items()}
            for step, entry in steps.items()}


def design(parts: dict[str, torch.Tensor], regressors: tuple[str, ...]) -> torch.Tensor:
    """``(R, E, P + 1)`` float64: the ``regressors`` of ``parts`` (each ``(R, ...)``) and a column of ones."""
    columns = [parts[r].double().flatten(1) for r in regressors]
    return torch.stack(columns + [torch.ones_like(columns[0])], dim=-1)


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, rows: int, ridge: float) -> torch.Tensor:
    """Per element, the least-squares coefficients ``(E, P + 1)`` from the pooled ``gram`` ``(E, P+1, P+1)`` and
    ``rhs`` ``(E, P+1)`` of ``rows`` rows, the ridge ``ridge · rows`` pulling ``K`` to 1 and the others to 0."""
    size = gram.shape[-1]
    prior = torch.zeros(size, dtype=gram.dtype)
    prior[0] = 1.0  # K → 1
    penalty = ridge * rows
    return torch.linalg.solve(gram + penalty * torch.eye(size, dtype=gram.dtype), rhs + penalty * prior)


def fit(data: dict[str, torch.Tensor], regressors: tuple[str, ...], ridge: float) -> torch.Tensor:
    """Per element, ridge least squares of ``fp`` on ``regressors`` and 1 over the rows: ``(E, P + 1)``."""
    a = design(data, regressors)
    return ridge_solve(torch.einsum("rep,req->epq", a, a), torch.einsum("rep,re->ep", a, data["fp"]), a.shape[0],
                       ridge)


def corrected(data: dict[str, torch.Tensor], regressors: tuple[str, ...], coef: torch.Tensor) -> torch.Tensor:
    """``ε'`` ``(R, E)`` of the per-element form fitted as ``coef``."""
    return torch.einsum("rep,ep->re", design(data, regressors), coef)


def by_position(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``(R, C·P)`` channel-major -> ``(R·P, C)``: one row per latent position."""
    return t.view(t.shape[0], channels, -1).transpose(1, 2).reshape(-1, channels)


def fit_channel_mix(data: dict, coef: torch.Tensor, ridge: float) -> torch.Tensor:
    """``M`` ``(C, C)``: ridge least squares of the affiner's residual on ``ε̂`` across channels, pooled over rows
    and positions (``residual ≈ ε̂ M`` per position)."""
    q, residual = by_position(data["q"], data["channels"]), by_position(data["fp"] - corrected(data, ("q",), coef),
                                                                       data["channels"])
    gram = q.T @ q
    return torch.linalg.solve(gram + ridge * q.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype), q.T @ residual)


def channel_mixed(data: dict, coef: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``ε'`` ``(R, E)`` of the affiner's form plus the channel mix ``ε̂ M``."""
    rows, channels = data["q"].shape[0], data["channels"]
    mixed = (by_position(data["q"], channels) @ mix).view(rows, -1, channels).transpose(1, 2).reshape(rows, -1)
    return corrected(data, ("q",), coef) + mixed


def relative_error(prediction: torch.Tensor, data: dict) -> float:
    """Mean over rows of ``‖ε' − ε‖ / ‖ε‖``."""
    return float(((prediction - data["fp"]).norm(dim=1) / data["fp"].norm(dim=1)).mean())


def error(data: dict[str, torch.Tensor], regressors: tuple[str, ...] | None, coef: torch.Tensor | None) -> float:
    """Mean over rows of ``‖ε' − ε‖ / ‖ε‖`` (``regressors`` None: uncorrected)."""
    return relative_error(data["q"] if regressors is None else corrected(data, regressors, coef), data)


def compare(name: str, preset: str, settings: dict, ridge: float) -> dict[str, float]:
    """Held-out reduction of the per-step error, mean over steps 0..n-2, for each of :data:`FORMS` and
    :data:`CHANNEL_MIX` (each form fitted once per step)."""
    from segquant.baselines.harness import quantize_entry
    from segquant.demo.cli import _load, demo_eval_config, demo_prompts
    from segquant.eval.harness import calibration_loader
    from segquant.pipeline.glue import get_denoiser
    from segquant.presets import preset_dict

    prompts, labels, calib = demo_prompts(settings)
    pipe = _load(name, None, False)
    cfg = demo_eval_config(settings, prompts, labels, calib)
    denoiser, fp = get_denoiser(pipe)
    qmodel = quantize_entry(copy.deepcopy(fp), calibration_loader(pipe, denoiser, cfg, progress=False),
                            preset_dict(preset))
    train = record(pipe, cfg, qmodel, fp, denoiser, calib)
    test = record(pipe, cfg, qmodel, fp, denoiser, prompts)
    steps = sorted(test)[:-1]
    ratios: dict[str, list[float]] = {form: [] for form in [*FORMS, CHANNEL_MIX]}
    for s in steps:
        uncorrected = error(test[s], None, None)
        coefs = {form: fit(train[s], regressors, ridge) for form, regressors in FORMS.items()}
        for form, regressors in FORMS.items():
            ratios[form].append(error(test[s], regressors, coefs[form]) / uncorrected)
        mix = fit_channel_mix(train[s], coefs[AFFINE], ridge)
        ratios[CHANNEL_MIX].append(relative_error(channel_mixed(test[s], coefs[AFFINE], mix), test[s]) / uncorrected)
    return {form: 1 - statistics.mean(r) for form, r in ratios.items()}


def main() -> None:
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mmdit,flux,unet")
    parser.add_argument("--presets", default="w4a8,w4a4")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--calib-prompts", type=int, default=8)
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge per row, toward K = 1, C = b = 0")
    opts = parser.parse_args()
    settings = demo_settings(build_parser().parse_args(
        ["demo", "--per-class", str(opts.per_class), "--steps", str(opts.steps), "--calib-prompts",
         str(opts.calib_prompts), "--no-fid"]))
    forms = [*FORMS, CHANNEL_MIX]
    print("| model | preset | " + " | ".join(f"held-out per-step error lower, {form}" for form in forms) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in forms) + " |")
    for name in opts.models.split(","):
        for preset in opts.presets.split(","):
            cells = compare(name, preset, settings, opts.ridge)
            print(f"| {name} | {preset} | " + " | ".join(f"{100 * v:.1f} %" for v in cells.values()) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
