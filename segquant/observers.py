"""Running statistics collected during calibration: every observer lives here.

Memory does not grow with the number of calibration samples:

* :class:`InputObserver`: per-channel signed min/max of a linear layer's input, an optional bounded
  reservoir of input rows (alpha search, percentile/MSE clipping) and an optional
  :class:`HessianObserver`.
* :class:`HessianObserver`: GPTQ's running Hessian. GPTQ (Frantar et al., 2022) minimises
  ``||X Wᵀ − X Ŵᵀ||²`` row by row; the Hessian of that loss with respect to a row of ``W`` is ``H = 2 X Xᵀ``
  (here with ``X`` as ``(n, K)`` rows: ``H = 2/n · Σ xᵢ xᵢᵀ``, normalised by the number of samples ``n`` as
  in the GPTQ reference code), kept as a single ``(K, K)`` float32 running mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segquant.errors import CalibrationError, ConfigError
from segquant.numerics import as_matrix, check_finite

_STORAGES = ("device", "cpu")


class InputObserver:
    """Statistics of the inputs ``x`` ``(..., K)`` of one linear layer.

    Attributes (float32, on ``device``): ``min`` / ``max`` ``(K,)`` signed per-channel extrema,
    ``rows_seen`` (int), ``sample`` ``(<= max_sample_rows, K)`` a uniform reservoir sample of rows
    (only when ``max_sample_rows > 0``), and a :class:`HessianObserver` when ``hessian=True``.
    """

    def __init__(self, name: str, k: int, device: torch.device | str = "cpu", hessian: bool = False,
                 hessian_storage: str = "device", max_sample_rows: int = 0, seed: int = 0):
        self.name, self.k, self.device = name, k, torch.device(device)
        self.min = torch.full((k,), float("inf"), device=self.device)
        self.max = torch.full((k,), float("-inf"), device=self.device)
        self.rows_seen = 0
        self.max_sample_rows, self.seed = max_sample_rows, seed
        self.sample: Tensor | None = None
        self._keys: Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)
        # x xᵀ is computed on ``device`` (where the inputs are moved); ``hessian_storage="cpu"`` only keeps
        # the (K, K) accumulator in CPU memory (``calib.cpu_storage``).
        self.hessian = HessianObserver(k, storage=hessian_storage) if hessian else None

    def update(self, x: Tensor) -> None:
        """Fold a batch of inputs ``x`` ``(..., K)`` (any float dtype) into the statistics."""
        m = as_matrix(x.detach()).to(self.device, torch.float32)
        if m.shape[-1] != self.k:
            raise CalibrationError(f"layer {self.name!r}: input has {m.shape[-1]} features, expected {self.k}")
        check_finite(m, f"input of layer {self.name!r}")
        self.min = torch.minimum(self.min, m.amin(dim=0))
        self.max = torch.maximum(self.max, m.amax(dim=0))
        if self.hessian is not None:
            self.hessian.update(m)
        if self.max_sample_rows:
            self._update_reservoir(m)
        self.rows_seen += m.shape[0]

    def start_batch(self, index: int) -> None:
        """Seed the reservoir keys of calibration batch ``index``: a row's key then depends only on its batch
        and its position in that batch, so processes that each see a share of the batches keep, once
        merged (:meth:`merge_reservoirs`), exactly the sample one process would keep."""
        self._generator.manual_seed(self.seed * 2**32 + index)

    def _update_reservoir(self, m: Tensor) -> None:
        """Keep a uniform sample of at most ``max_sample_rows`` rows of everything seen.

        Bottom-k sampling: every row gets a uniform random float64 key; the rows with the k smallest
        keys are a uniform sample without replacement. The sample is kept sorted by key, so its order
        does not depend on the order the rows arrived in.
        """
        keys = torch.rand(m.shape[0], generator=self._generator, dtype=torch.float64).to(self.device)
        rows = m if self.sample is None else torch.cat([self.sample, m])
        all_keys = keys if self._keys is None else torch.cat([self._keys, keys])
        self.sample, self._keys = _bottom_k(rows, all_keys, self.max_sample_rows)

    def reservoir_cpu(self) -> tuple[Tensor, Tensor] | None:
        """``(rows (n, K) float32, keys (n,) float64)`` of the sample on CPU, or ``None`` before any row."""
        return None if self.sample is None else (self.sample.cpu(), self._keys.cpu())

    def merge_reservoirs(self, parts: list[tuple[Tensor, Tensor] | None]) -> None:
        """Replace the sample by the ``max_sample_rows`` smallest-key rows of ``parts`` (each the
        :meth:`reservoir_cpu` of an observer that saw other batches; this observer's own among them)."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return
        rows = torch.cat([r for r, _ in parts]).to(self.device)
        keys = torch.cat([k for _, k in parts]).to(self.device)
        self.sample, self._keys = _bottom_k(rows, keys, self.max_sample_rows)

    @property
    def absmax(self) -> Tensor:
        """Per-channel ``max |x|`` ``(K,)`` float32."""
        self._require_data()
        return torch.maximum(self.max.abs(), self.min.abs())

    def _require_data(self) -> None:
        if self.rows_seen == 0:
            raise CalibrationError(f"layer {self.name!r} saw no calibration input; is it used in forward?")


class HessianObserver:
    """Accumulate ``H = 2/n · Σ x xᵀ`` over every row ``x`` (a token) of the inputs seen.

    Args:
        k: the feature dim ``K`` of the layer input.
        device: where ``x xᵀ`` is computed (e.g. the calibration ``tmp_device``); ``None`` = the device
            of each input.
        storage: ``"device"`` keeps the ``(K, K)`` accumulator on the compute device; ``"cpu"`` keeps it
            in CPU memory (``cpu_storage``) and only moves each batch's ``(K, K)`` product there.
    """

    def __init__(self, k: int, device: torch.device | str | None = None, storage: str = "device") -> None:
        if not isinstance(k, int) or k <= 0:
            raise ConfigError(f"k: {k!r} must be a positive integer (the layer's input features)")
        if storage not in _STORAGES:
            raise ConfigError(f"storage: {storage!r} is not valid; allowed: {', '.join(map(repr, _STORAGES))}")
        self.k = k
        self.device = torch.device(device) if device is not None else None
        self.storage = storage
        self.n_samples = 0
        self._h: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` ``(..., K)`` (any float dtype) to the running Hessian.

        Raises :class:`CalibrationError` on NaN/inf or a wrong feature dim.
        """
        if x.shape[-1] != self.k:
            raise CalibrationError(f"HessianObserver: input has {x.shape[-1]} features, expected {self.k}")
        check_finite(x, "HessianObserver input")
        rows = as_matrix(x)
        m = rows.shape[0]
        if m == 0:
            return
        compute = self.device if self.device is not None else rows.device
        rows = rows.to(device=compute, dtype=torch.float32)
        outer = rows.T @ rows  # (K, K) float32, Σ x xᵀ over this batch
        if self._h is None:
            self._h = torch.zeros(self.k, self.k, dtype=torch.float32, device=self._home(compute))
        total = self.n_samples + m
        # running mean of 2·x xᵀ: H ← H·n/(n+m) + 2/(n+m)·Σ x xᵀ (bounded magnitude, as in GPTQ)
        self._h.mul_(self.n_samples / total).add_(outer.to(self._h.device), alpha=2.0 / total)
        self.n_samples = total

    def share(self, total: int) -> Tensor:
        """``H · n / total`` ``(K, K)`` float32 (zeros before any sample): this observer's part of the mean
        over ``total`` samples seen by several observers (see ``segquant.distributed.reduce_observers``)."""
        if self._h is None:
            home = self._home(self.device or torch.device("cpu"))
            return torch.zeros(self.k, self.k, dtype=torch.float32, device=home)
        return self._h * (self.n_samples / total)

    def load_mean(self, h: Tensor, n_samples: int) -> None:
        """Replace the running mean by ``h`` ``(K, K)`` float32 over ``n_samples`` samples."""
        self._h, self.n_samples = h, n_samples

    def _home(self, compute: torch.device) -> torch.device:
        return torch.device("cpu") if self.storage == "cpu" else compute

    def hessian(self) -> Tensor:
        """The accumulated ``(K, K)`` float32 Hessian (a copy; the observer keeps accumulating)."""
        if self._h is None:
            raise CalibrationError("HessianObserver: no samples were observed; the layer never ran during calibration")
        return self._h.clone()

    def reset(self) -> None:
        """Forget every sample (frees the accumulator)."""
        self.n_samples = 0
        self._h = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator (``4·K²`` once a sample was seen, else 0)."""
        return 0 if self._h is None else self._h.numel() * self._h.element_size()

    def __repr__(self) -> str:
        return f"HessianObserver(k={self.k}, n_samples={self.n_samples}, storage={self.storage!r})"


def _bottom_k(rows: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The (at most) ``k`` rows of ``rows`` ``(n, K)`` with the smallest ``keys`` ``(n,)``, sorted by key."""
    keep = keys.argsort(stable=True)[:k]
    return rows[keep], keys[keep]
