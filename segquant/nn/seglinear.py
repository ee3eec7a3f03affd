"""``SegLinear``: the quantized replacement of ``nn.Linear``; its forward runs on a kernel backend.

``y = x Wᵀ + b`` with ``W`` ``(N, K)``. Output rows are split into output segments (e.g. the chunks of an
AdaLN modulation linear), input columns into input segments (e.g. attention heads, or the two parts of a
``cat``). For output segment ``s`` with SmoothQuant vector ``λ_s`` ``(K,)``:

    y_s = Σ_j Q(x_j / λ_s,j) · Ŵ[s, j]ᵀ  (+ x · D_sᵀ · U_sᵀ  the low-rank branch)

where ``j`` runs over input segments, ``Q`` is the input quantizer (static scale per ``(s, j)`` or dynamic;
DualScale splits ``x = x⁺ + x⁻`` with one scale per sign) and ``Ŵ`` the dequantized weight (which already
contains ``λ_s`` and is the residual after the low-rank branch). The math itself is
:func:`segquant.kernels.reference.seglinear_forward`; ``forward`` hands the module to the backend named
``backend_name`` (default ``"emulated"``; switch with :func:`segquant.kernels.set_backend`).

Canonical buffers (registered, persistent: what ``state_dict`` and save files hold; shapes with ``S``
output segments, ``J`` input segments, ``G`` weight scale columns, ``r`` rank):

=====================  ==================  ====================================================
name                   shape               dtype / meaning
=====================  ==================  ====================================================
``weight_codes``       (N, K)              int8 / int16 / float8 codes, or the float weight
                                           itself when weights are not quantized
                       (N, ⌈K/2⌉)          uint8 for int4 weights: two codes per byte along K,
                                           low nibble first (:func:`segquant.numerics.pack_int4`)
``weight_scale``       (N, G)              float32 scale of each row and scale column
                       (N, 1)              two-level INT4 (``spec.weight_two_level``): the row's base
``weight_steps``       (N, G)              uint8, two-level only: the group scales are
                                           ``weight_scale · weight_steps`` (steps 1..16), so
                                           ``code · step`` is an exact INT8 weight
``weight_col_group``   (K,)                int64: scale column of every weight column
``bias``               (N,)                the original bias (only if the layer had one)
``smooth``             (S, K)              float32 SmoothQuant divisor λ_s (only with smoothing), times
                                           the segment's input scale where those are folded
                                           (``spec.folded_input_segments``)
``input_scale``        (S, J)              float32 static input scale (DualScale: positive side)
``input_scale_neg``    (S, J)              float32 static DualScale negative-side scale
``input_zero_point``   (S, J)              float32 static asymmetric zero point
``lowrank_up``         (N, r)              16-bit low-rank branch ``U`` (rows of all segments)
``lowrank_down``       (S, r, K)           16-bit low-rank branch ``D_s``, smoothing folded in
                                           (the SVD's factor of ``W·λ_s``, divided by ``λ_s``)
=====================  ==================  ====================================================

A backend may add packed tensors of its own as non-persistent buffers (moved by ``.to()``, never saved).
Under ``module.to(dtype)`` only ``bias`` and the low-rank branch follow the dtype; codes, float32
scales and packed tensors keep theirs. The forward never modifies its input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segquant.enums import DType
from segquant.kernels.backend import DEFAULT_BACKEND, get_backend
from segquant.kernels.reference import SegLinearBuffers, dequantized_weight
from segquant.nn.spec import SegLinearSpec

_FOLLOW_DTYPE = ("bias", "lowrank_up", "lowrank_down")


def _codes_layout(spec: SegLinearSpec, dtype: torch.dtype) -> tuple[int, torch.dtype]:
    """``(columns, dtype)`` of the ``weight_codes`` buffer (see the module docstring)."""
    if spec.weight_dtype is DType.INT4:
        return (spec.in_features + 1) // 2, torch.uint8
    return spec.in_features, spec.weight_dtype.torch_dtype if spec.weight_dtype else dtype


class SegLinear(nn.Module):
    """Segment-wise quantized linear layer: build it from a spec and fill the buffers, or load a state."""

    def __init__(self, spec: SegLinearSpec, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.in_features, self.out_features = spec.in_features, spec.out_features
        n, k, s, j = spec.out_features, spec.in_features, len(spec.output_segments), len(spec.input_segments)
        f32 = dict(device=device, dtype=torch.float32)
        columns, code_dtype = _codes_layout(spec, dtype)
        self.register_buffer("weight_codes", torch.zeros(n, columns, device=device, dtype=code_dtype))
        two_level = spec.weight_two_level
        self.register_buffer("weight_scale", torch.ones(n, 1 if two_level else spec.weight_scale_columns, **f32))
        self.register_buffer("weight_steps", torch.ones(n, spec.weight_scale_columns, device=device,
                                                        dtype=torch.uint8) if two_level else None)
        self.register_buffer("weight_col_group", torch.zeros(k, device=device, dtype=torch.int64))
        self.register_buffer("bias", torch.zeros(n, device=device, dtype=dtype) if spec.has_bias else None)
        self.register_buffer("smooth", torch.ones(s, k, **f32) if spec.has_smooth_buffer else None)
        static = spec.input_dtype is not None and not spec.input_dynamic
        self.register_buffer("input_scale", torch.ones(s, j, **f32) if static else None)
        self.register_buffer("input_scale_neg", torch.ones(s, j, **f32) if static and spec.dual_scale else None)
        asym = static and not spec.input_symmetric and not spec.dual_scale
        self.register_buffer("input_zero_point", torch.zeros(s, j, **f32) if asym else None)
        branch = dict(device=device, dtype=spec.low_rank_dtype)
        self.register_buffer("lowrank_up", torch.zeros(n, spec.low_rank, **branch) if spec.low_rank else None)
        self.register_buffer("lowrank_down", torch.zeros(s, spec.low_rank, k, **branch) if spec.low_rank else None)
        self.backend_name = DEFAULT_BACKEND
        self._backend = get_backend(DEFAULT_BACKEND)

    def extra_repr(self) -> str:
        return self.spec.describe()

    def _apply(self, fn, recurse: bool = True):
        """Move buffers with ``fn``; only ``bias`` and the low-rank branch may change dtype (see module doc)."""
        kept = {name: t for name, t in self._buffers.items() if t is not None and name not in _FOLLOW_DTYPE}
        super()._apply(fn, recurse)
        for name, original in kept.items():
            moved = self._buffers[name]
            if moved.dtype != original.dtype:
                self._buffers[name] = original.to(moved.device)
        return self

    def canonical_buffers(self) -> SegLinearBuffers:
        """The canonical buffers (``None`` where the spec has none), as the reference functions take them."""
        return SegLinearBuffers(*(getattr(self, name) for name in SegLinearBuffers._fields))

    @property
    def weight(self) -> Tensor:
        """The dequantized weight ``(N, K)`` float32 (without the low-rank branch), for inspection only."""
        return self.dequantized_weight()

    def dequantized_weight(self) -> Tensor:
        """``Ŵ`` ``(N, K)`` float32: codes times their row/column-group scale."""
        return dequantized_weight(self.canonical_buffers(), self.spec)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., K)`` any float dtype -> ``(..., N)`` in ``x.dtype``, computed by the layer's backend."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SegLinear expected {self.in_features} input features, got shape {tuple(x.shape)}")
        return self._backend.forward(self, x)
