"""The quantizer baselines of ``segquant eval --baselines``: one :class:`Baseline` per method and bit width.

Each entry names its paper, its bit widths, the granularity of its scales (so a reader sees which
comparisons are like for like) and how it quantizes a denoiser: a segquant config (the method's numerics
expressed with segquant's own algorithms), optionally a ``transform`` that replaces ``segquant.quantize``
(PTQ4DiT's timestep-aware salience, Q-Diffusion's learned rounding, the established tools), and the
calibration timestep sampler it is defined with (PTQ4DM: normal; the others: uniform).

    from segquant.baselines import BASELINES
    model = BASELINES["ptq4dm_w8a8"].quantize(model, calib_loader)
"""

from __future__ import annotations

from typing import Any

from segquant.baselines.baseline import Baseline

#: Segquant layer config fragments the baselines are built from.
_INT8_STATIC = {"type": "int8", "granularity": "tensor", "dynamic": False}
_INT8_CHANNEL = {"type": "int8", "granularity": "channel"}
_INT4_CHANNEL = {"type": "int4", "granularity": "channel"}
_INT4_GROUP = {"type": "int4", "granularity": "group", "group_size": 64}
_NO_SEGMENTS = {"seglinear": False, "search_patterns": []}

def _default(**layer: Any) -> dict:
    return {"default": layer}


def _svdquant(gptq: bool) -> Baseline:
    calib = "gptq" if gptq else "amax"
    return Baseline(
        f"svdquant_w4a4{'_gptq' if gptq else ''}", "SVDQuant (Li et al., ICLR 2025)", "W4A4",
        "W int4 per-group(64), A int4 dynamic per-group(64); rank-32 16-bit branch",
        f"SmoothQuant alpha 0.5, rank-32 low-rank branch of the smoothed weight, residual int4 per-group(64) by "
        f"{'GPTQ' if gptq else 'round-to-nearest'}; no SegQuant segments.",
        _default(**_NO_SEGMENTS, opt={"type": "svd", "alpha": 0.5, "low_rank": 32}, calib={"type": calib},
                 input_quant={**_INT4_GROUP, "dynamic": True}, weight_quant=_INT4_GROUP))


def _ptq4dm(bits: str, weight: dict) -> Baseline:
    return Baseline(
        f"ptq4dm_{bits.lower()}", "PTQ4DM (Shang et al., CVPR 2023)", bits,
        f"W {weight['type']} per-channel, A int8 static per-tensor",
        "Calibration timesteps drawn from a normal distribution over the step index (NormalSampler), twice "
        "the trajectories at half the steps each; MSE-searched clip of every weight channel and input tensor.",
        _default(**_NO_SEGMENTS, opt={"type": "default"}, calib={"type": "mse"}, input_quant=_INT8_STATIC,
                 weight_quant=weight), sampler="normal")


def _ptq4dit(bits: str, weight: dict) -> Baseline:
    from segquant.baselines.ptq4dit import ptq4dit_quantize, transformer_only

    return Baseline(
        f"ptq4dit_{bits.lower()}", "PTQ4DiT (Wu et al., NeurIPS 2024)", bits,
        f"W {weight['type']} per-channel, A int8 static per-tensor",
        "Channel-wise salience balancing (CSB) with the timestep-aware, Spearman-weighted activation "
        "salience (SSC); transformer models only (the paper's scope).",
        _default(**_NO_SEGMENTS, opt={"type": "smooth", "alpha": 0.5}, calib={"type": "mse"},
                 input_quant=_INT8_STATIC, weight_quant=weight),
        transform=ptq4dit_quantize, applies=transformer_only)


def _qdiffusion(bits: str, weight: dict) -> Baseline:
    from segquant.baselines.qdiffusion import qdiffusion_quantize

    return Baseline(
        f"qdiffusion_{bits.lower()}", "Q-Diffusion (Li et al., ICCV 2023)", bits,
        f"W {weight['type']} per-channel, A int8 static per-tensor (split at concatenations)",
        "Uniform calibration timesteps; MSE-initialised scales; block-wise reconstruction (BRECQ) of the "
        "weights' rounding with AdaRound; split quantization of concatenated inputs (concat_to_linear). The "
        "UNet's shortcut concatenations feed convolutions, which no method here quantizes.",
        _default(seglinear=True, search_patterns=["concat_to_linear"], opt={"type": "default"},
                 calib={"type": "mse"}, input_quant=_INT8_STATIC, weight_quant=weight),
        transform=qdiffusion_quantize)


def _table() -> dict[str, Baseline]:
    from segquant.baselines.tools import TOOL_BASELINES

    entries = [_svdquant(False), _svdquant(True),
               _ptq4dm("W8A8", _INT8_CHANNEL), _ptq4dm("W4A8", _INT4_CHANNEL),
               _ptq4dit("W8A8", _INT8_CHANNEL), _ptq4dit("W4A8", _INT4_CHANNEL),
               _qdiffusion("W8A8", _INT8_CHANNEL), _qdiffusion("W4A8", _INT4_CHANNEL), *TOOL_BASELINES]
    return {b.name: b for b in entries}


#: name -> :class:`Baseline`, in the order of the brief (SVDQuant, PTQ4DM, PTQ4DiT, Q-Diffusion, tools).
BASELINES: dict[str, Baseline] = _table()


def parse_baselines(spec: str | None) -> list[str]:
    """``"all"``, ``""``/``None`` (none) or a comma-separated list of baseline names, each checked."""
    from segquant.eval.options import checked_names

    if spec is None or not spec.strip():
        return []
    if spec.strip() == "all":
        return list(BASELINES)
    return checked_names(spec, BASELINES, "--baselines", "baseline", f"baselines: {', '.join(BASELINES)}, or 'all'")
