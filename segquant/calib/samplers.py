"""Timestep samplers: which denoising steps of each calibration trajectory are recorded.

A calibration trajectory is one pipeline call with ``max_timestep`` denoising steps (the pipeline's
``num_inference_steps``). Steps are named by their **step index** ``i`` in ``0 .. max_timestep - 1``
in the order the pipeline runs them: ``i = 0`` is the first, noisiest step. The sampler picks, for
each of the ``sample_size`` trajectories (one per prompt), a sorted set of ``timestep_per_sample``
distinct step indices to record. The names of the three settings follow the original calibration
config (``max_timestep``, ``sample_size``, ``timestep_per_sample``).

- :class:`UniformSampler` (Q-Diffusion style): ``k`` evenly spaced steps including the first and the
  last, the same for every trajectory.
- :class:`NormalSampler` (PTQ4DM style): ``k`` distinct steps drawn, per trajectory, from a normal
  distribution over the step index (``mean``, ``std`` in step units; mass beyond the ends is
  clamped onto the first/last step, as in the original), without replacement.
- :class:`StepListSampler`: an explicit list of step indices.

All samplers are deterministic: ``steps_for(prompt_id)`` depends only on the settings, ``seed`` and
``prompt_id``, so an interrupted calibration run can resume with exactly the same choice.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from segquant.errors import ConfigError


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{key}: {value!r} must be a positive integer")
    return int(value)


class TimestepSampler(ABC):
    """Base class: the three calibration-config settings plus a seed.

    Args:
        max_timestep: number of denoising steps T of each trajectory (``num_inference_steps``).
        sample_size: number of trajectories (prompts) to record.
        timestep_per_sample: number of distinct steps k recorded per trajectory (k <= T).
        seed: seed of the random choice (samplers that draw at random).
    """

    kind: str = ""

    def __init__(self, max_timestep: int, sample_size: int, timestep_per_sample: int, seed: int = 0):
        self.max_timestep = _positive_int(max_timestep, "max_timestep")
        self.sample_size = _positive_int(sample_size, "sample_size")
        self.timestep_per_sample = _positive_int(timestep_per_sample, "timestep_per_sample")
        if self.timestep_per_sample > self.max_timestep:
            raise ConfigError(
                f"timestep_per_sample: {timestep_per_sample} exceeds max_timestep {max_timestep} "
                "(a trajectory has only max_timestep distinct steps)"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed: {seed!r} must be an integer")
        self.seed = int(seed)

    @abstractmethod
    def steps_for(self, prompt_id: int) -> list[int]:
        """Sorted, distinct step indices in ``[0, max_timestep)`` to record for trajectory ``prompt_id``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings; ``sampler_from_dict`` inverts it."""
        return {
            "type": self.kind,
            "max_timestep": self.max_timestep,
            "sample_size": self.sample_size,
            "timestep_per_sample": self.timestep_per_sample,
            "seed": self.seed,
            **self._extra(),
        }

    def _extra(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimestepSampler) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))


class UniformSampler(TimestepSampler):
    """``timestep_per_sample`` evenly spaced steps from the first (0) to the last (T-1) step.

    With k = 1 only step 0 is recorded. Positions ``j (T-1)/(k-1)`` are rounded half up.
    """

    kind = "uniform"

    def steps_for(self, prompt_id: int) -> list[int]:
        t, k = self.max_timestep, self.timestep_per_sample
        if k == 1:
            return [0]
        return [int(math.floor(j * (t - 1) / (k - 1) + 0.5)) for j in range(k)]


class NormalSampler(TimestepSampler):
    """Steps drawn from ``N(mean, std)`` over the step index, k distinct ones per trajectory.

    Args:
        mean: centre, in step units (default ``(T-1)/2``). Step 0 is the noisiest step.
        std: spread, in step units (default ``(T-1)/2``, as in the original PTQ4DM-style sampler).

    Step ``i`` has the probability mass of ``[i - 0.5, i + 0.5)`` under the normal; the tails are
    clamped onto steps 0 and T-1. k distinct steps are drawn without replacement with a generator
    seeded by ``(seed, prompt_id)``.
    """

    kind = "normal"

    def __init__(
        self,
        max_timestep: int,
        sample_size: int,
        timestep_per_sample: int,
        mean: float | None = None,
        std: float | None = None,
        seed: int = 0,
    ):
        super().__init__(max_timestep, sample_size, timestep_per_sample, seed)
        half = (self.max_timestep - 1) / 2
        self.mean = float(half if mean is None else mean)
        self.std = float(half if std is None else std)
        if not math.isfinite(self.mean):
            raise ConfigError(f"mean: {mean!r} must be a finite number (step units)")
        if not math.isfinite(self.std) or self.std < 0:
            raise ConfigError(f"std: {std!r} must be a finite number >= 0 (step units)")

    def _extra(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std}

    def probabilities(self) -> np.ndarray:
        """Probability of each step index, float64 (T,), summing to 1."""
        t = self.max_timestep
        edges = np.arange(t + 1, dtype=np.float64) - 0.5
        if self.std == 0:
            mass = np.zeros(t)
            mass[int(min(max(round(self.mean), 0), t - 1))] = 1.0
        else:
            z = (edges - self.mean) / (self.std * math.sqrt(2.0))
            cdf = 0.5 * (1.0 + np.array([math.erf(v) for v in z]))
            cdf[0], cdf[-1] = 0.0, 1.0  # clamp the tails onto the first/last step
            mass = np.diff(cdf)
        mass = np.maximum(mass, 1e-12)  # keep every step reachable so k distinct draws always exist
        return mass / mass.sum()

    def steps_for(self, prompt_id: int) -> list[int]:
        rng = np.random.default_rng([self.seed, int(prompt_id)])
        chosen = rng.choice(self.max_timestep, size=self.timestep_per_sample, replace=False, p=self.probabilities())
        return sorted(int(i) for i in chosen)


class StepListSampler(TimestepSampler):
    """Record exactly the given step indices in every trajectory.

    Args:
        steps: distinct step indices in ``[0, max_timestep)``; ``timestep_per_sample`` = ``len(steps)``.
    """

    kind = "steps"

    def __init__(self, steps: Sequence[int], max_timestep: int, sample_size: int, seed: int = 0):
        clean = sorted({int(s) for s in steps})
        if not clean or len(clean) != len(list(steps)):
            raise ConfigError(f"steps: {list(steps)!r} must be a non-empty list of distinct step indices")
        bad = [s for s in clean if not 0 <= s < int(max_timestep)]
        if bad:
            raise ConfigError(f"steps: {bad} outside [0, max_timestep={max_timestep})")
        super().__init__(max_timestep, sample_size, len(clean), seed)
        self.steps = clean

    def _extra(self) -> dict[str, Any]:
        return {"steps": list(self.steps)}

    def steps_for(self, prompt_id: int) -> list[int]:
        return list(self.steps)


_KINDS = {cls.kind: cls for cls in (UniformSampler, NormalSampler, StepListSampler)}


def sampler_from_dict(data: dict[str, Any]) -> TimestepSampler:
    """Rebuild a sampler from ``to_dict()`` output; unknown keys or types raise ``ConfigError``."""
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in _KINDS:
        raise ConfigError(f"sampler type: {kind!r} is not valid; allowed: {', '.join(_KINDS)}")
    cls = _KINDS[kind]
    if cls is StepListSampler:
        data.pop("timestep_per_sample", None)
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"sampler {kind!r}: bad settings {sorted(data)}: {exc}") from None
