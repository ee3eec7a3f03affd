"""The ``"emulated"`` backend: the reference functions in plain torch, on any device and dtype."""

from __future__ import annotations

from torch import Tensor, nn

from segquant.kernels.backend import Backend, register_backend
from segquant.kernels.reference import seglinear_forward


@register_backend
class EmulatedBackend(Backend):
    """Fake-quantized float32 math (:func:`segquant.kernels.reference.seglinear_forward`); packs nothing."""

    name = "emulated"

    def forward(self, module: nn.Module, x: Tensor) -> Tensor:
        return seglinear_forward(x, module.canonical_buffers(), module.spec)
