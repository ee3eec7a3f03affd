"""The ``"emulated"`` backend: the reference functions in plain torch, on any device and dtype."""

from __future__ import annotations

from torch import Tensor, nn

from segquant.kernels.backend import Backend, register_backend
from segquant.kernels.reference import seglinear_forward


@register_backend
class EmulatedBackend(Backend):
    """The reference math (:func:`segquant.kernels.reference.seglinear_forward`: fake-quantized float32, INT8 x INT8
    summed exactly as the GPU kernels do); packs nothing."""

    name = "emulated"

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        return seglinear_forward(x, module.canonical_buffers(), module.spec)
