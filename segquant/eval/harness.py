"""Evaluation harness: full precision vs every quantization preset, same prompts, seeds and steps.

    result = evaluate(pipe, ["rtn_w8a8", "w8a8", "w4a8"], EvalConfig(prompts=[...]))
    write_report(result, "segquant-report")          # segquant.eval.report

For one pipeline and a list of presets / configs: generate the full-precision (FP) images once;
record calibration inputs with ``generate_calibrate_set``; quantize a copy of the denoiser with each
preset; generate with it (image ``i`` always starts from the noise of seed ``seed + i``); compare
with FP. Per preset: PSNR, SSIM, FID / KID vs the FP set (Inception), class accuracy and classifier
feature distance (when a classifier is given), optional LPIPS / CLIP / ImageReward, wall time and peak
memory of quantization and of generation, and the relative denoiser-output error per denoising step,
measured by replaying the FP trajectory's denoiser inputs through the quantized model.

Under ``torchrun`` (see :mod:`segquant.distributed`) every rank makes the same ``evaluate`` call:
image batches are split between the ranks and gathered on rank 0, the calibration set is recorded by
all ranks and calibration is data-parallel, per-step errors are gathered, and the metrics are
computed once, on rank 0, whose :class:`EvalResult` is the single-process one (timings aside). The
other ranks' results hold no images and no metrics.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from segquant import distributed
from segquant.calib.records import tree_copy
from segquant.devices import model_device, move_to
from segquant.errors import ConfigError
from segquant.kernels.fp8_accumulation import FP8_NUMERICS, tensor_core_numerics
from segquant.pipeline.glue import output_images
from segquant.pipeline.seeding import seeded_global_rng
from segquant.pipeline.steps import StepInfo
from segquant.pipeline.tap import DenoiserTap, TapCall, output_sample, tapping

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Settings of one evaluation run (all presets share them).

    ``labels``: class label per prompt (for class accuracy); ``calib_prompts``: prompts of the
    calibration trajectories (default: ``prompts``); ``calib_steps``: steps recorded per trajectory
    (uniform; default ``None`` = every step: static SmoothQuant factors calibrated on a few timesteps do not
    transfer to the others); ``error_images``: the FP denoiser calls of the batches holding the first ``error_images``
    images are replayed through each quantized model for the per-step error;
    ``fid``: compute FID/KID with Inception; ``optional_weights``: see ``metrics.optional_metrics``;
    ``corrections``: per-step corrections ("affiner", "ptqd", "tac") fitted on the calibration prompts and
    shown on top of each preset (``segquant.eval.corrections``), ``correction_config``: method -> settings
    overriding ``process_affiner``'s defaults. ControlNet pipelines: ``controls`` / ``calib_controls``, float
    ``(N, 3, H, W)`` in [0, 1], one control image per prompt / calibration prompt, passed as
    ``control_argument``; then the report shows them first and scores edge F1 (``segquant.eval.edges``).
    ``fp8_numerics``: how the emulated backend sums FP8 x FP8 products (:data:`FP8_NUMERICS`): ``"float32"`` exactly
    (fast on the CPU), ``"tensor-cores"`` as Hopper's tensor cores do, to the bit of what the gpu backend computes
    (:mod:`segquant.kernels.fp8_accumulation`; about a hundred times a matmul's time on the CPU).
    """

    prompts: list[str]
    labels: list[int] | None = None
    seed: int = 0
    num_inference_steps: int = 10
    guidance_scale: float = 4.0
    batch_size: int = 10
    calib_prompts: list[str] | None = None
    calib_steps: int | None = None
    calib_batch_size: int = 8
    error_images: int = 10
    fid: bool = True
    classifier: nn.Module | None = None
    optional_weights: dict = field(default_factory=dict)
    pipeline_kwargs: dict = field(default_factory=dict)
    denoiser: str | None = None
    corrections: tuple[str, ...] = ()
    correction_config: dict = field(default_factory=dict)
    controls: torch.Tensor | None = None
    calib_controls: torch.Tensor | None = None
    control_argument: str = "control_image"
    fp8_numerics: str = "float32"

    def __post_init__(self) -> None:
        if self.fp8_numerics not in FP8_NUMERICS:
            raise ConfigError(f"fp8_numerics {self.fp8_numerics!r}: choose from {', '.join(FP8_NUMERICS)}")

    def recorded_calib_steps(self) -> int:
        """Steps recorded per calibration trajectory (``calib_steps``, default every step)."""
        return min(self.calib_steps or self.num_inference_steps, self.num_inference_steps)

    def settings(self) -> dict:
        """JSON-able summary of the settings."""
        keep = ("seed", "num_inference_steps", "guidance_scale", "batch_size", "calib_steps",
                "calib_batch_size", "error_images", "fid", "denoiser", "corrections", "correction_config",
                "fp8_numerics")
        out = {k: getattr(self, k) for k in keep}
        out.update(n_prompts=len(self.prompts), n_calib_prompts=len(self.calib_prompts or self.prompts),
                   calib_steps_recorded=self.recorded_calib_steps(),
                   classifier=self.classifier is not None, controlnet=self.controls is not None,
                   pipeline_kwargs={k: str(v) for k, v in self.pipeline_kwargs.items()})
        return out


@dataclass
class EvalResult:
    """Rows (one dict per configuration, FP first), images per configuration (float ``(N, C, H, W)``
    in [0, 1]), per-step denoiser errors per preset, the step timesteps, prompts and settings."""

    rows: list[dict]
    images: dict[str, torch.Tensor]
    errors: dict[str, list[float]]
    timesteps: list[float]
    prompts: list[str]
    settings: dict
    skipped: list[str] = field(default_factory=list)


class PeakMemory:
    """Context manager: peak memory (MB) during the block. CUDA: ``max_memory_allocated``; CPU: the
    peak resident set size of the process (sampled every 5 ms from ``/proc/self/statm``), and its
    increase over the start."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb = self.delta_mb = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mb, self.delta_mb = peak / 2**20, (peak - self._start) / 2**20


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # not Linux: ru_maxrss is the best available (KiB, never decreases)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def preset_label(preset: Any, index: int) -> tuple[str, Any]:
    """``(label, config)`` for a preset entry: a name / YAML path (label = itself), a ``(label, config)``
    pair, or a dict / QuantConfig (label ``config<index>``)."""
    if isinstance(preset, tuple) and len(preset) == 2 and isinstance(preset[0], str):
        return preset
    if isinstance(preset, str):
        return preset, preset
    return f"config{index}", preset


def generate_images(pipe, cfg: EvalConfig, desc: str = "generate", progress: bool = True,
                    tap: "DenoiserTap | None" = None) -> torch.Tensor | None:
    """Images float ``(N, C, H, W)`` in [0, 1] for ``cfg.prompts``; image ``i`` uses the generator seeded
    ``cfg.seed + i``, so every configuration starts from the same noise. ``tap`` (optional) is installed,
    with the batch's prompt ids, for the batches that hold the first ``cfg.error_images`` images.

    Under torchrun each rank generates a contiguous share of the batches (the same batches as one
    process) and rank 0 gets all images; the other ranks get ``None``."""
    starts = range(0, len(cfg.prompts), cfg.batch_size)
    mine = [starts[i] for i in distributed.shard_range(len(starts))]
    progress = progress and distributed.current().is_main
    out = distributed.all_ranks(lambda: _generate_batches(pipe, cfg, mine, desc, progress, tap), "generating images")
    parts = distributed.gather_to_main(out)
    return None if parts is None else torch.cat(parts)


def _generate_batches(pipe, cfg: EvalConfig, starts: list[int], desc: str, progress: bool, tap) -> list[torch.Tensor]:
    """The images of the batches that begin at ``starts`` (see ``generate_images``)."""
    out = []
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = list(cfg.prompts[start: start + cfg.batch_size])
        gens = [torch.Generator("cpu").manual_seed(cfg.seed + start + j) for j in range(len(chunk))]
        control = {} if cfg.controls is None else {cfg.control_argument: cfg.controls[start: start + len(chunk)]}
        record = tap if start < cfg.error_images else None
        with tapping(record, range(start, start + len(chunk))), torch.no_grad(), seeded_global_rng(cfg.seed + start):
            res = pipe(prompt=chunk, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                       generator=gens, output_type="pt", **control, **cfg.pipeline_kwargs)
        out.append(torch.as_tensor(output_images(res)).float().cpu())
    return out


@dataclass
class FPCall:
    """One recorded full-precision denoiser call: where it stands, its keyword inputs (CPU copies) and
    its predicted sample (float32, CPU)."""

    info: StepInfo
    inputs: dict
    sample: torch.Tensor


def fp_call_tap(pipe, name: str, calls: list[FPCall]) -> DenoiserTap:
    """A tap on denoiser ``name`` of ``pipe`` that appends every call to ``calls``."""

    def after(call: TapCall) -> None:
        calls.append(FPCall(call.info, tree_copy(call.inputs), call.sample.detach().float().cpu()))

    return DenoiserTap(pipe, name, after=after)


@torch.no_grad()
def step_errors(model: nn.Module, calls: list[FPCall], num_steps: int, correction=None) -> list[float]:
    """Relative L2 error ``‖q(x) − fp(x)‖ / ‖fp(x)‖`` of ``model`` on recorded FP calls, averaged per step;
    a list of length ``num_steps`` (NaN for steps without a call). ``correction``: a stepper applied to
    ``q(x)`` first (``correction(q(x), info)``). Under torchrun ``calls`` are this rank's; the per-call
    errors of all ranks are averaged in rank order (= call order), the same on every rank."""
    sums, counts = [0.0] * num_steps, [0] * num_steps
    device = model_device(model)
    per_call = []
    for call in calls:
        kwargs = move_to(call.inputs, device)  # nested too: a UNet's added_cond_kwargs
        out = output_sample(model(**kwargs))
        out = (out if correction is None else correction(out, call.info)).float().cpu()
        per_call.append((call.info.step_index, float((out - call.sample).norm() / call.sample.norm().clamp_min(1e-12))))
    for step, err in distributed.gather_list(per_call):
        sums[step] += err
        counts[step] += 1
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def _record_fp(pipe, name: str, fp: nn.Module, cfg: EvalConfig, progress: bool):
    """Generate the FP images; record the denoiser calls of the batches holding the first
    ``error_images`` images (the recording adds one copy of those inputs to the FP memory peak)."""
    calls: list[FPCall] = []
    t0 = time.perf_counter()
    with PeakMemory(fp.device) as mem:
        images = generate_images(pipe, cfg, "fp", progress, tap=fp_call_tap(pipe, name, calls))
    gen_s = time.perf_counter() - t0
    # rank 0 always generates (the first batch is its); a rank without a batch has no timesteps
    timesteps = distributed.on_main(lambda: [float(t) for t in pipe.scheduler.timesteps], "reading the timesteps")
    return images, calls, timesteps, {"gen_s": gen_s, "gen_peak_mb": mem.peak_mb, "gen_delta_mb": mem.delta_mb}


def calibration_loader(pipe, name: str, cfg: EvalConfig, progress: bool, sampler: str = "uniform"):
    """Record calibration inputs of the denoiser with ``generate_calibrate_set``; ``sampler``: which steps
    (``"uniform"``; ``"normal"``: PTQ4DM's, see ``segquant.baselines.harness.sampler_for``)."""
    from segquant.baselines.harness import sampler_for
    from segquant.calib import generate_calibrate_set

    sampler, prompts = sampler_for(sampler, cfg.num_inference_steps, list(cfg.calib_prompts or cfg.prompts),
                                   cfg.recorded_calib_steps())
    controls = cfg.calib_controls if cfg.calib_prompts else cfg.controls
    if controls is not None:  # PTQ4DM's normal sampler repeats the prompt list: controls follow by position
        controls = [controls[i % len(controls): i % len(controls) + 1] for i in range(len(prompts))]
    items = prompts if controls is None else [{"prompt": p, cfg.control_argument: c} for p, c in zip(prompts, controls)]
    dataset = generate_calibrate_set(pipe, sampler, items, name, seed=cfg.seed + 100_000, progress=progress,
                                     num_inference_steps=cfg.num_inference_steps,
                                     guidance_scale=cfg.guidance_scale, **cfg.pipeline_kwargs)
    return dataset.get_dataloader(cfg.calib_batch_size)


def evaluate(pipe, presets: list, cfg: EvalConfig, calib_loader=None, progress: bool = True) -> EvalResult:
    """Run the comparison (see the module docstring). ``presets``: preset names, baseline names
    (``segquant.baselines``), YAML paths, config dicts / QuantConfigs or ``(label, config)`` pairs.
    ``calib_loader``: an iterable of denoiser-call batches to use instead of recording one (for every
    entry). A preset that fails is reported in its row (``error``); a baseline that does not apply to the
    model, in its row (``not_applicable``)."""
    from segquant.baselines.harness import CalibrationLoaders, granularity, not_applicable
    from segquant.eval.metrics import score_reference
    from segquant.pipeline.glue import get_denoiser

    name, fp = get_denoiser(pipe, cfg.denoiser)
    fp_images, calls, timesteps, fp_cost = _record_fp(pipe, name, fp, cfg, progress)
    ref = score_reference(fp_images, cfg) if fp_images is not None else None
    rows = [{"config": "fp", **fp_cost, **(ref.row if ref is not None else {})}]
    images, errors = ({} if cfg.controls is None else {"control": cfg.controls}), {}
    images["fp"] = fp_images
    t0 = time.perf_counter()
    loader = calib_loader if calib_loader is not None else calibration_loader(pipe, name, cfg, progress)
    loaders = CalibrationLoaders(loader, time.perf_counter() - t0, lambda kind: loader if calib_loader is not None
                                 else calibration_loader(pipe, name, cfg, progress, kind))
    for i, preset in enumerate(presets):
        label, config = preset_label(preset, i)
        reason = not_applicable(config, fp)
        if reason:
            rows.append({"config": label, "granularity": granularity(config), "not_applicable": reason})
            continue
        logger.info("evaluating %s", label)
        entry_loader, calib_s = loaders.get(config)
        try:
            with tensor_core_numerics(FP8_NUMERICS[cfg.fp8_numerics]):
                results = _run_preset(pipe, name, fp, config, entry_loader, cfg, calls, ref, progress, label)
        except Exception as exc:  # keep the other presets; the failure is in the table
            logger.exception("preset %s failed", label)
            results = [(label, {"error": f"{type(exc).__name__}: {exc}"}, None, None)]
        for row_label, row, imgs, errs in results:
            rows.append({"config": row_label, "granularity": granularity(config), "calib_s": calib_s, **row})
            if imgs is not None:
                images[row_label], errors[row_label] = imgs, errs
    settings = {**cfg.settings(), "denoiser_class": type(fp).__name__, "pipeline": type(pipe).__name__}
    return EvalResult(rows, images, errors, timesteps, list(cfg.prompts), settings,
                      ref.skipped if ref is not None else [])


def _run_preset(pipe, name, fp, config, loader, cfg, calls, ref, progress, label):
    """``[(label, row, images, step_errors)]``: the preset, then the preset with each correction."""
    from segquant.baselines.harness import quantize_entry
    from segquant.pipeline.glue import swapped_denoiser

    t0 = time.perf_counter()
    with PeakMemory(fp.device) as qmem:
        qmodel = quantize_entry(copy.deepcopy(fp), loader, config)
    quant_s = time.perf_counter() - t0
    n_seg = sum(1 for m in qmodel.modules() if type(m).__name__ == "SegLinear")
    with swapped_denoiser(pipe, qmodel, name):
        t0 = time.perf_counter()
        with PeakMemory(fp.device) as gmem:
            images = generate_images(pipe, cfg, label, progress)
        gen_s = time.perf_counter() - t0
    logger.info("%s: quantized in %.1f s, generated in %.1f s", label, quant_s, gen_s)
    errs = step_errors(qmodel, calls, cfg.num_inference_steps)
    row = {"quant_s": quant_s, "quant_peak_mb": qmem.peak_mb, "quant_delta_mb": qmem.delta_mb,
           "gen_s": gen_s, "gen_peak_mb": gmem.peak_mb, "gen_delta_mb": gmem.delta_mb,
           "quantized_layers": n_seg, "mean_step_error": _nanmean(errs), **_scores(images, ref, cfg)}
    corrected = correction_rows(pipe, name, qmodel, cfg, calls, ref, progress, label) if cfg.corrections else []
    del qmodel
    return [(label, row, images, errs), *corrected]


def correction_rows(pipe, name, qmodel, cfg, calls, ref, progress, label) -> list[tuple]:
    """``[(label+method, row, images, step_errors)]`` for each of ``cfg.corrections`` on ``qmodel``
    (see ``segquant.eval.corrections``): fit time, metrics, per-step error after correction."""
    from segquant.affiner import installed
    from segquant.eval.corrections import fit_correction
    from segquant.pipeline.glue import swapped_denoiser

    out = []
    for method in cfg.corrections:
        corr, fit_s = fit_correction(pipe, qmodel, method, cfg)
        with swapped_denoiser(pipe, qmodel, name), installed(pipe, corr):
            t0 = time.perf_counter()
            images = generate_images(pipe, cfg, f"{label}+{method}", progress)
            gen_s = time.perf_counter() - t0
        errs = step_errors(qmodel, calls, cfg.num_inference_steps, correction=corr)
        logger.info("%s+%s: fitted in %.1f s", label, method, fit_s)
        row = {"fit_s": fit_s, "strength": getattr(corr, "strength", None), "gen_s": gen_s,
               "mean_step_error": _nanmean(errs), **_scores(images, ref, cfg)}
        out.append((f"{label}+{method}", row, images, errs))
    return out


def _scores(images: torch.Tensor | None, ref, cfg: EvalConfig) -> dict:
    """``score_preset`` on the rank that holds the images (rank 0 under torchrun); ``{}`` elsewhere."""
    from segquant.eval.metrics import score_preset

    return {} if images is None else score_preset(images, ref, cfg)


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
