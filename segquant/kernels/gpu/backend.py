"""``GpuBackend`` (``"gpu"``): SegLinear on real 8-bit tensor cores (INT8 x INT8, FP8 E4M3 x FP8 E4M3).

What runs here: weights INT8 (INT4/INT6 codes, stored as int8, too) with INT8 inputs, or FP8 E4M3 weights
with FP8 E4M3 inputs; per-tensor / per-channel / per-input-segment weight scales; static symmetric inputs
(per output and input segment, DualScale included) or dynamic symmetric inputs (per token, per tensor or
per group, DualScale included); output segments with their own smoothing as one launch; the low-rank
branch in 16-bit torch ops. Anything else fails :meth:`GpuBackend.check` with the layer's name.

Data flow per call: plain elementwise quantization (``quant``) -> ``segquant::scaled_gemm`` (``ops``) ->
low-rank branch. Importing this module does not import Triton (the CUDA kernel imports it on first use).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.errors import BackendUnavailableError
from segquant.kernels.backend import EMULATED_ALTERNATIVE, Backend, register_backend
from segquant.kernels.gpu.ops import gemm
from segquant.kernels.gpu.plan import pack_tensors, seglinear_forward
from segquant.kernels.layout import GemmLayout, layout_of

_INT_WEIGHTS = (DType.INT4, DType.INT6, DType.INT8)
MIN_TILE_K = 32  # smallest K tile of an 8-bit tensor-core product
MIN_TILE_N = 32  # smallest N tile of the kernel's configs


def _format_problem(spec) -> str | None:
    if spec.weight_dtype is None:
        return "weights must be quantized"
    if spec.input_dtype is None:
        if spec.weight_dtype not in _INT_WEIGHTS:
            return f"weight-only {spec.weight_dtype.value} has no kernel (supported: integer weights)"
        return "weight-only layers with smoothing have no kernel" if spec.smooth else None
    int_pair = spec.weight_dtype in _INT_WEIGHTS and spec.input_dtype is DType.INT8
    fp8_pair = spec.weight_dtype is DType.FP8E4M3 and spec.input_dtype is DType.FP8E4M3
    if not (int_pair or fp8_pair):
        return (f"weights {spec.weight_dtype.value} x inputs {spec.input_dtype.value} has no kernel "
                "(supported: int4/int6/int8 x int8, fpe4m3 x fpe4m3, int weights x 16-bit inputs)")
    if not spec.input_symmetric:
        return "asymmetric inputs (zero points) have no kernel; use symmetric inputs"
    return None


def _device_problem(spec) -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install segquant[gpu])"
    if spec.input_dtype is DType.FP8E4M3 and torch.cuda.get_device_capability() < (8, 9):
        return f"FP8 tensor cores need compute capability 8.9+, this GPU has {torch.cuda.get_device_capability()}"
    return None


def _layout_problem(layout: GemmLayout) -> str | None:
    spec = layout.spec
    if spec.weight_dtype is DType.INT4 and spec.in_features % 2:
        return (f"INT4 weights need an even number of input channels (the kernel reads inputs in pairs), "
                f"got {spec.in_features}")
    if spec.weight_dtype is DType.INT4 and layout.k_align % 2:
        return f"INT4 weight-scale groups must have even sizes (codes are read in pairs), got alignment {layout.k_align}"
    if layout.tile_scaled and layout.k_align % MIN_TILE_K:
        return (f"input segment / scale-group boundaries must be multiples of {MIN_TILE_K} channels (K tiles), "
                f"got segments {spec.input_segments} (alignment {layout.k_align})")
    if layout.per_segment_input and (len(set(spec.output_segments)) > 1 or layout.out_segment % MIN_TILE_N):
        return (f"output segments with their own smoothing must be equal and multiples of {MIN_TILE_N}, "
                f"got {spec.output_segments}")
    return None


@register_backend
class GpuBackend(Backend):
    """Real W8A8 kernels on CUDA. ``pack`` adds the tensors listed in :mod:`segquant.kernels.gpu.plan`
    (folded input multipliers, static scales, K scale-column maps) plus ``module.gpu_layout``."""

    name = "gpu"

    def check(self, module, layer_name: str) -> None:
        reason = _format_problem(module.spec) or _device_problem(module.spec) or _layout_problem(layout_of(module))
        if reason is not None:
            raise BackendUnavailableError(layer_name, self.name, reason, EMULATED_ALTERNATIVE)

    def pack(self, module) -> None:
        layout = layout_of(module)
        for name, tensor in pack_tensors(module, layout).items():
            module.register_buffer(name, tensor, persistent=False)
        module.gpu_layout = layout

    def forward(self, module, x: Tensor) -> Tensor:
        return seglinear_forward(module, module.gpu_layout, x, gemm)
