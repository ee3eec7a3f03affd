"""``--correction``: per-step error corrections (affiner, PTQD, TAC) on top of each quantization preset.

For each preset and each correction, the harness (``harness.correction_rows``) fits the correction
with ``process_affiner`` on the calibration prompts (never the evaluation prompts; recurrent, ``EvalConfig.correction_config``
overrides the defaults), generates the evaluation images with it applied, and adds the row
``<preset>+<method>`` reports the fit time (``fit_s``), the usual metrics and the per-step error
after correction: the recorded full-precision calls replayed through the quantized model with the
output correction applied (TAC's input-bias part is not in this number: the replayed inputs are the
full-precision ones).
"""

from __future__ import annotations

import time

from segquant.errors import ConfigError

CORRECTIONS = ("none", "affiner", "ptqd", "tac")


def parse_corrections(spec: str | None) -> tuple[str, ...]:
    """The methods of a ``--correction`` list (``"none"`` dropped: the uncorrected row is always shown)."""
    from segquant.eval.options import did_you_mean

    names = [s.strip() for s in (spec or "none").split(",") if s.strip()]
    for name in names:
        if name not in CORRECTIONS:
            raise ConfigError(f"--correction: unknown correction {name!r}{did_you_mean(name, CORRECTIONS)}; "
                              f"choose from {', '.join(CORRECTIONS)}")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def fit_correction(pipe, qmodel, method: str, cfg):
    """``(correction, seconds)``: ``method`` fitted for ``qmodel`` against ``pipe``'s denoiser."""
    from segquant.affiner import process_affiner

    config = {"method": method, "num_inference_steps": cfg.num_inference_steps,
              "guidance_scale": cfg.guidance_scale, "batch_size": max(1, cfg.calib_batch_size),
              "seed": cfg.seed + 200_000, "pipeline_kwargs": dict(cfg.pipeline_kwargs),
              **cfg.correction_config.get(method, {})}
    t0 = time.perf_counter()
    corr = process_affiner(config, list(cfg.calib_prompts or cfg.prompts), pipe, qmodel, shuffle=False)
    return corr, time.perf_counter() - t0
