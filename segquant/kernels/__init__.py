"""How quantized layers compute: the reference math and the kernel backends.

* :mod:`.reference` — the ``SegLinear`` math as pure functions (the oracle every kernel is tested against).
* :mod:`.gemm_reference` — the pure-torch twin of the GPU's scaled GEMM op (INT8 x INT8 to the bit).
* :mod:`.layout` / :mod:`.quant` — the GEMM layout of a layer and its activation quantizer, shared by the
  reference and the GPU plan.
* :mod:`.backend` — :class:`Backend`, the registry and :func:`set_backend`.
* :mod:`.emulated` — the default ``"emulated"`` backend (the reference functions, any device).
* ``gpu`` — real low-bit kernels on CUDA (``"gpu"``), imported only when asked for.
"""

from segquant.kernels.backend import Backend, available_backends, get_backend, register_backend, set_backend

__all__ = ["Backend", "available_backends", "get_backend", "register_backend", "set_backend"]
