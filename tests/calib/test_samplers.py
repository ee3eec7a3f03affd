"""Timestep samplers: exact uniform choice, normal sampler distribution and determinism, validation."""

import numpy as np
import pytest

from segquant.calib.samplers import NormalSampler, StepListSampler, UniformSampler, sampler_from_dict
from segquant.errors import ConfigError


@pytest.mark.parametrize(
    "t, k, expected",
    [(10, 4, [0, 3, 6, 9]), (50, 5, [0, 12, 25, 37, 49]), (7, 1, [0]), (5, 5, [0, 1, 2, 3, 4]), (28, 2, [0, 27])],
)
def test_uniform_steps_are_evenly_spaced_from_first_to_last(t, k, expected):
    sampler = UniformSampler(max_timestep=t, sample_size=3, timestep_per_sample=k)
    assert sampler.steps_for(0) == expected
    assert sampler.steps_for(2) == expected  # the same for every trajectory


def test_normal_sampler_is_deterministic_given_seed_and_prompt():
    a = NormalSampler(30, 8, 6, seed=1)
    b = NormalSampler(30, 8, 6, seed=1)
    c = NormalSampler(30, 8, 6, seed=2)
    per_prompt = [a.steps_for(i) for i in range(8)]
    assert per_prompt == [b.steps_for(i) for i in range(8)]
    assert per_prompt != [c.steps_for(i) for i in range(8)]
    assert len({tuple(s) for s in per_prompt}) > 1  # prompts get different draws
    for steps in per_prompt:
        assert steps == sorted(set(steps)) and len(steps) == 6 and 0 <= steps[0] and steps[-1] < 30


def test_normal_sampler_follows_its_distribution():
    sampler = NormalSampler(max_timestep=40, sample_size=1, timestep_per_sample=1, mean=10.0, std=3.0, seed=0)
    draws = np.array([sampler.steps_for(i)[0] for i in range(2000)])
    assert abs(draws.mean() - 10.0) < 0.3
    assert abs(draws.std() - 3.0) < 0.3
    probs = sampler.probabilities()
    assert probs.shape == (40,) and abs(probs.sum() - 1.0) < 1e-12
    assert probs.argmax() == 10


def test_normal_sampler_clamps_tails_onto_the_ends():
    low = NormalSampler(10, 1, 1, mean=-20.0, std=1.0)
    high = NormalSampler(10, 1, 1, mean=30.0, std=1.0)
    assert all(low.steps_for(i) == [0] for i in range(20))
    assert all(high.steps_for(i) == [9] for i in range(20))
    assert NormalSampler(10, 1, 1, mean=4.4, std=0.0).steps_for(0) == [4]


def test_normal_sampler_all_steps_when_k_equals_t():
    assert NormalSampler(6, 1, 6, mean=0.0, std=0.5).steps_for(3) == list(range(6))


def test_step_list_sampler():
    sampler = StepListSampler([7, 0, 3], max_timestep=8, sample_size=2)
    assert sampler.steps_for(0) == [0, 3, 7] and sampler.timestep_per_sample == 3
    with pytest.raises(ConfigError, match=r"steps: \[8\] outside"):
        StepListSampler([1, 8], max_timestep=8, sample_size=1)
    with pytest.raises(ConfigError, match="distinct"):
        StepListSampler([1, 1], max_timestep=8, sample_size=1)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(max_timestep=0, sample_size=1, timestep_per_sample=1), "max_timestep"),
        (dict(max_timestep=5, sample_size=-1, timestep_per_sample=1), "sample_size"),
        (dict(max_timestep=5, sample_size=1, timestep_per_sample=6), "timestep_per_sample"),
        (dict(max_timestep=5.0, sample_size=1, timestep_per_sample=1), "max_timestep"),
    ],
)
def test_invalid_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        UniformSampler(**kwargs)


def test_normal_sampler_rejects_negative_std():
    with pytest.raises(ConfigError, match="std"):
        NormalSampler(10, 1, 1, std=-1.0)


@pytest.mark.parametrize(
    "sampler",
    [UniformSampler(20, 4, 5, seed=3), NormalSampler(20, 4, 5, mean=3.0, std=2.0, seed=9), StepListSampler([1, 4], 20, 4)],
)
def test_to_dict_round_trip(sampler):
    rebuilt = sampler_from_dict(sampler.to_dict())
    assert rebuilt == sampler and type(rebuilt) is type(sampler)
    assert [rebuilt.steps_for(i) for i in range(4)] == [sampler.steps_for(i) for i in range(4)]


def test_from_dict_rejects_unknown_type():
    with pytest.raises(ConfigError, match="sampler type"):
        sampler_from_dict({"type": "cosine", "max_timestep": 3, "sample_size": 1, "timestep_per_sample": 1})
