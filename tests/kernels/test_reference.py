"""The reference functions and the emulated backend against the frozen pre-seam ``SegLinear.forward``
(``legacy_seglinear.py``), bitwise on CPU, over every case of ``seglinear_cases.py`` (odd sizes included),
except where the reference has since followed the GPU kernels: INT4 weights rounded to their 16-bit compute
dtype (``int4_compute_dtype``), and INT8 x INT8 products summed exactly with the kernels' float32 epilogue
(``integer_exact``; the pre-seam forward summed dequantized values in float32)."""

import pytest
import torch
from legacy_seglinear import legacy_forward
from seglinear_cases import CASES, random_buffers, random_input

from segquant.kernels.reference import (SegLinearBuffers, dequantized_weight, int4_compute_dtype, integer_exact,
                                       seglinear_forward)
from segquant.nn.seglinear import SegLinear


def filled_module(case, dtype):
    module = SegLinear(case.spec, dtype=dtype)
    for name, value in random_buffers(case).items():
        if value is not None:
            getattr(module, name).copy_(value)
    return module


def module_buffers(module) -> dict:
    return {name: getattr(module, name) for name in SegLinearBuffers._fields}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_and_module_match_the_pre_seam_forward_bitwise(case):
    module = filled_module(case, case.x_dtype)
    x = random_input(case)
    expected = legacy_forward(module_buffers(module), case.spec, x)
    reference = seglinear_forward(x, module.canonical_buffers(), case.spec)
    assert reference.dtype == x.dtype and reference.shape == (*case.x_shape[:-1], case.spec.out_features)
    assert torch.equal(module(x), reference)  # the emulated backend is the reference
    relative = ((reference.double() - expected.double()).norm() / expected.double().norm()).item()
    if integer_exact(module.canonical_buffers(), case.spec):  # float32 rounding of the old sum: ~1e-7, output ulps
        assert relative <= (1e-6 if x.dtype == torch.float32 else 4e-3)
    elif int4_compute_dtype(case.spec, x.dtype) is None:
        assert torch.equal(reference, expected)
    else:  # INT4 weights rounded to the kernels' 16-bit compute dtype (fp16: 2^-12)
        assert not torch.equal(reference, expected)
        assert relative <= 1e-3


@pytest.mark.parametrize("case", CASES[:3], ids=[c.name for c in CASES[:3]])
def test_reference_takes_plain_tensors_and_never_modifies_them(case):
    buffers = SegLinearBuffers(**random_buffers(case))
    before = [None if t is None else t.clone() for t in buffers]
    x = random_input(case)
    x_before = x.clone()
    seglinear_forward(x, buffers, case.spec)
    assert torch.equal(x, x_before)
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(buffers, before))


def test_oracle_can_fail():
    """The comparison above is not vacuous: a one-code change in the weight changes the output."""
    case = CASES[0]
    module = filled_module(case, torch.float32)
    x = random_input(case)
    buffers = module_buffers(module)
    buffers["weight_codes"] = buffers["weight_codes"].clone()
    buffers["weight_codes"][0, 0] += 1 if buffers["weight_codes"][0, 0] < 127 else -1
    assert not torch.equal(legacy_forward(buffers, case.spec, x), module(x))


def test_dequantized_weight_is_codes_times_group_scale():
    case = next(c for c in CASES if c.name == "weight_groups")
    b = SegLinearBuffers(**random_buffers(case))
    w = dequantized_weight(b, case.spec)
    assert torch.equal(w[:, 9], b.weight_codes[:, 9].float() * b.weight_scale[:, 1])
