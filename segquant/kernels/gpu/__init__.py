"""The ``"gpu"`` backend of :class:`~segquant.nn.seglinear.SegLinear`: real INT8 / FP8 W8A8 GEMMs on CUDA.

Layout (only ``backend`` and ``ops`` / ``triton_gemm`` need CUDA and Triton; they are imported lazily):

- ``plan``: what a layer needs (formats, DualScale, segments) and the packed tensors built from the
  canonical buffers; the forward's data flow (quantize -> GEMM -> low-rank branch), shared by the
  GPU backend and its pure-torch twin.
- ``quant``: the activation quantizer in plain elementwise torch ops (torch.compile fuses it into the
  preceding norm / modulation).
- ``triton_gemm``: the Triton kernel (per-K-tile scaled 8-bit GEMM, DualScale, output segments).
- ``ops``: ``torch.library`` custom op ``segquant::scaled_gemm`` with its fake implementation.
- ``backend``: the ``GpuBackend`` registered as ``"gpu"``.

The pure-torch twin of the GEMM op is :mod:`segquant.kernels.gemm_reference`.
"""

from segquant.kernels.gpu.backend import GpuBackend

__all__ = ["GpuBackend"]
