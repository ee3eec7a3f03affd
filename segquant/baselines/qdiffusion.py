"""Q-Diffusion (Li et al., ICCV 2023) on segquant: uniform timestep calibration (the harness's default
sampler), MSE-initialised scales and split quantization of concatenated inputs (the config), then
block-wise reconstruction of the weights' rounding with AdaRound (:mod:`segquant.baselines.adaround`).

Blocks are the numbered children of the denoiser (``transformer_blocks.3``, ``down_blocks.1``; a layer
outside them is its own block, see :func:`segquant.sequential.block_of`), reconstructed in execution order.
Each block's inputs and full-precision outputs are recorded on the first ``batches`` calibration batches;
the rounding of all its quantized linears is learned jointly on them (weights only, full-precision inputs;
Q-Diffusion's later LSQ refinement of the activation scales is not done: they stay MSE-searched).
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import torch
from torch import Tensor, nn

from segquant.baselines.adaround import AdaRoundSettings, reconstruct_block
from segquant.calibration import run_batch
from segquant.errors import ConfigError
from segquant.kernels.reference import weight_scales
from segquant.numerics import stored_codes

logger = logging.getLogger(__name__)

#: The reconstruction budget of ``segquant eval`` (the paper: 20k steps per block, on a GPU).
DEFAULT_SETTINGS = AdaRoundSettings(iters=100, lr=5e-2)
DEFAULT_BATCHES = 2


def flat_output(output: Any) -> Tensor:
    """Every tensor of a module's output as one float32 ``(B, F)`` (``(1, F)`` when batch sizes differ)."""
    leaves = []

    def walk(value: Any) -> None:
        if isinstance(value, Tensor):
            leaves.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(output)
    rows = leaves[0].shape[0] if leaves and all(t.dim() and t.shape[0] == leaves[0].shape[0] for t in leaves) else 1
    return torch.cat([t.float().reshape(rows, -1) for t in leaves], dim=1)


def record_blocks(model: nn.Module, blocks: list[str], loader: Any, batches: int) -> dict[str, list[tuple]]:
    """``{block: [(args, kwargs, output (B, F))]}`` of the full-precision ``model`` on the first ``batches``
    batches of ``loader``."""
    records: dict[str, list[tuple]] = {b: [] for b in blocks}
    handles = []
    for block in blocks:
        module = model.get_submodule(block)

        def pre(_m, args, kwargs, block=block):
            records[block].append([copy.copy(args), dict(kwargs)])

        def post(_m, _args, output, block=block):
            records[block][-1].append(flat_output(output).detach())

        handles += [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]
    try:
        with torch.no_grad():
            for batch in itertools.islice(loader, batches):
                run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {b: [tuple(r) for r in recs] for b, recs in records.items()}


def full_scale(qlinear: nn.Module) -> Tensor:
    """A ``SegLinear``'s weight scales expanded to the weight's shape ``(N, K)`` float32."""
    return weight_scales(qlinear.canonical_buffers())[:, qlinear.weight_col_group]


def reconstruct(fp: nn.Module, qmodel: nn.Module, blocks: list[tuple[str, list[str]]], loader: Any,
                settings: AdaRoundSettings, batches: int) -> None:
    """Learn the rounding of ``qmodel``'s ``SegLinear`` weights block by block against ``fp``; writes the codes."""
    fp.requires_grad_(False)
    records = record_blocks(fp, [b for b, _ in blocks], loader, batches)
    for block, names in blocks:
        module, recs = fp.get_submodule(block), records[block]
        if not recs:
            logger.warning("Q-Diffusion: block %s never ran on the calibration batches; rounding to nearest", block)
            continue
        quantized = {n: qmodel.get_submodule(n) for n in names}
        for name, q in quantized.items():
            if q.spec.smooth or q.spec.low_rank or q.spec.weight_dtype is None:
                raise ConfigError(f"{name}: AdaRound reconstruction expects plain quantized weights "
                                  "(no smoothing, no low-rank branch)")
        dtype = next(iter(quantized.values())).spec.weight_dtype
        codes = reconstruct_block(lambda i: flat_output(module(*recs[i][0], **recs[i][1])), [r[2] for r in recs],
                                  {n: fp.get_submodule(n) for n in names},
                                  {n: full_scale(q) for n, q in quantized.items()}, dtype, settings)
        for name, q in quantized.items():
            q.weight_codes.copy_(stored_codes(codes[name].to(q.weight_codes.device), q.spec.weight_dtype))
        logger.info("Q-Diffusion: reconstructed %s (%d layers)", block, len(names))


def qdiffusion_quantize(model: nn.Module, loader: Any, config: dict, settings: AdaRoundSettings = DEFAULT_SETTINGS,
                        batches: int = DEFAULT_BATCHES) -> nn.Module:
    """Quantize ``model`` in place with ``config`` (segquant), then reconstruct the weights' rounding
    block-wise with AdaRound on the first ``batches`` batches of ``loader`` (re-iterable); returns ``model``."""
    from segquant import quantize
    from segquant.calibration import first_batch
    from segquant.sequential import blocks_in_order

    fp = copy.deepcopy(model)
    quantize(model, loader, config=config)
    blocks = blocks_in_order(fp, model.segquant_plan, first_batch(loader))
    with torch.enable_grad():
        reconstruct(fp, model, blocks, loader, settings, batches)
    return model
