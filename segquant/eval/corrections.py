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


def _positive(value: str) -> int:
    """A count of at least one (``ValueError`` otherwise)."""
    count = int(value)
    if count < 1:
        raise ValueError(value)
    return count


#: Settings of a ``--correction`` item: ``process_affiner``'s, and ``prompts`` (fit on the first N calibration
#: prompts; with ``validation_prompts=V`` the last V of those choose the strength instead of being fitted on).
SETTINGS = {"blocksize": int, "alpha": float, "lambda1": float, "lambda2": float, "noise_target": str,
            "recurrent": lambda v: {"true": True, "false": False}[v.lower()], "validation_prompts": _positive,
            "validation_z": float, "prompts": _positive}


def split_correction(label: str) -> tuple[str, dict]:
    """``"affiner:blocksize=4:lambda1=0.01"`` -> ``("affiner", {"blocksize": 4, "lambda1": 0.01})``: a method
    and the settings of this variant (keys of ``SETTINGS``); raises ``ConfigError`` naming a bad part."""
    from segquant.eval.options import did_you_mean

    method, *parts = label.split(":")
    if method not in CORRECTIONS:
        raise ConfigError(f"--correction: unknown correction {method!r}{did_you_mean(method, CORRECTIONS)}; "
                          f"choose from {', '.join(CORRECTIONS)}")
    settings = {}
    for part in parts:
        key, _, value = part.partition("=")
        if key not in SETTINGS or not value:
            raise ConfigError(f"--correction {label!r}: {part!r} is not KEY=VALUE with KEY one of "
                              f"{', '.join(SETTINGS)}{did_you_mean(key, SETTINGS)}")
        try:
            settings[key] = SETTINGS[key](value)
        except (ValueError, KeyError):
            raise ConfigError(f"--correction {label!r}: bad value {value!r} for {key}") from None
    if method != "none":  # settings that do not go together fail here, before any generation
        from segquant.affiner.process import as_affiner_config

        try:
            as_affiner_config({"method": method, **{k: v for k, v in settings.items() if k != "prompts"}})
        except ConfigError as error:
            raise ConfigError(f"--correction {label!r}: {error}") from None
    return method, settings


def parse_corrections(spec: str | None) -> tuple[str, ...]:
    """The corrections of a ``--correction`` list (``"none"`` dropped: the uncorrected row is always shown).

    Each item is a method, optionally with settings of its own (``affiner:blocksize=8:lambda1=0.01``), so
    one run can compare variants; every item is checked here, before any generation."""
    labels = [s.strip() for s in (spec or "none").split(",") if s.strip()]
    for label in labels:
        split_correction(label)
    return tuple(dict.fromkeys(n for n in labels if n != "none"))


def fit_correction(pipe, qmodel, label: str, cfg):
    """``(correction, seconds)``: correction ``label`` (see :func:`split_correction`) fitted for ``qmodel``
    against ``pipe``'s denoiser on the calibration prompts (the first ``prompts`` of them when the label sets
    it; more than there are is a ``ConfigError``); ``cfg.correction_config[method]`` and then the label's
    settings override ``process_affiner``'s defaults."""
    from segquant.affiner import process_affiner

    method, settings = split_correction(label)
    fit_prompts = list(cfg.calib_prompts or cfg.prompts)
    count = settings.pop("prompts", len(fit_prompts))
    if count > len(fit_prompts):
        raise ConfigError(f"--correction {label!r}: prompts={count}, but there are {len(fit_prompts)} calibration "
                          "prompts (raise --calib-prompts)")
    config = {"method": method, "num_inference_steps": cfg.num_inference_steps,
              "guidance_scale": cfg.guidance_scale, "batch_size": max(1, cfg.calib_batch_size),
              "seed": cfg.seed + 200_000, "pipeline_kwargs": dict(cfg.pipeline_kwargs),
              **cfg.correction_config.get(method, {}), **settings}
    t0 = time.perf_counter()
    corr = process_affiner(config, fit_prompts[:count], pipe, qmodel, shuffle=False)
    return corr, time.perf_counter() - t0
