"""The ``"gpu"`` backend of :class:`~segquant.nn.seglinear.SegLinear`: real 8-bit and packed-INT4 GEMMs on CUDA.

Layout (the ``triton_*`` kernels need Triton and are imported lazily, on the first CUDA call):

- ``plan``: the packed tensors built from the canonical buffers and the forward's data flow (quantize -> GEMM ->
  low-rank branch), shared by the GPU backend and its pure-torch twin; it routes by the layer's
  :mod:`segquant.kernels.layout` and quantizes with :mod:`segquant.kernels.quant` (plain elementwise torch ops,
  which torch.compile fuses into the preceding norm / modulation; the emulated layer uses them too).
- ``ops``: the ``torch.library`` ops ``segquant::scaled_gemm`` / ``segquant::dequantize_w4`` with their fake
  implementations, and the routing between the kernels below and cuBLAS(Lt) (its switches: ``ops.switched``).
- ``triton_gemm``: the tiled kernel (per-K-tile scaled 8-bit or packed-INT4 GEMM, DualScale, output segments,
  low-rank epilogue); ``triton_gemv``: the weight-bound few-row case on the CUDA cores; ``triton_tma``: the
  persistent TMA kernel for compute-bound 8-bit layers, optionally with its last partial wave split along K (each
  where it measured fastest); ``triton_w4``: the one-pass
  INT4 dequantization.
- ``backend``: the ``GpuBackend`` registered as ``"gpu"``.

The pure-torch twin of the GEMM op is :mod:`segquant.kernels.gemm_reference`.
"""

from segquant.kernels.gpu.backend import GpuBackend

__all__ = ["GpuBackend"]
