"""Timestep-wise error correction of quantized diffusion models: the blockwise affiner, PTQD, TAC-Diffusion.

    affiner = process_affiner({"blocksize": 2}, prompts, fp_pipe, quantized_denoiser)
    with install_stepper(fp_pipe, affiner), swapped_denoiser(fp_pipe, quantized_denoiser):
        images = fp_pipe(...)
    save_correction(affiner, "affiner"); affiner = load_correction("affiner")

The protocol every correction (and a ``thirdparty_affiner``) follows is in :mod:`segquant.affiner.base`.
"""

from segquant.affiner.base import CorrectionMismatchError, StepCorrector
from segquant.affiner.blockwise import BlockwiseAffiner
from segquant.affiner.hooks import installed
from segquant.affiner.io import load_correction, save_correction
from segquant.affiner.process import AffinerConfig, process_affiner
from segquant.affiner.ptqd import PTQDCorrector
from segquant.affiner.tac import TACCorrector

__all__ = ["AffinerConfig", "BlockwiseAffiner", "CorrectionMismatchError", "PTQDCorrector", "StepCorrector",
           "TACCorrector", "installed", "load_correction", "process_affiner", "save_correction"]
