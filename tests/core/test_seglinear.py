"""SegLinear: exact emulated semantics, buffers, state_dict / .to / deepcopy / safetensors, no in-place edits."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from segquant.enums import DType
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import SegLinearSpec
from segquant.algorithms.dualscale import fake_quant_dualscale
from segquant.numerics import PerToken, dynamic_fake_quant, fake_quant


def filled(spec: SegLinearSpec, seed: int = 0) -> SegLinear:
    g = torch.Generator().manual_seed(seed)
    module = SegLinear(spec)
    n, k = spec.out_features, spec.in_features
    if spec.weight_dtype is DType.INT8:
        module.weight_codes.copy_(torch.randint(-128, 128, (n, k), generator=g))
    module.weight_scale.uniform_(0.001, 0.01, generator=g)
    if module.bias is not None:
        module.bias.normal_(generator=g)
    for name in ("input_scale", "input_scale_neg"):
        if getattr(module, name) is not None:
            getattr(module, name).uniform_(0.01, 0.02, generator=g)
    if module.smooth is not None:
        module.smooth.uniform_(0.5, 2.0, generator=g)
    if module.lowrank_up is not None:
        module.lowrank_up.normal_(generator=g)
        module.lowrank_down.normal_(generator=g)
    return module


SPECS = {
    "plain": SegLinearSpec(16, 12, (12,), (16,), DType.INT8),
    "segments": SegLinearSpec(16, 12, (4, 8), (6, 10), DType.INT8, dual_scale=True, weight_scale_columns=2,
                              smooth=True, low_rank=2),
    "dynamic": SegLinearSpec(16, 12, (6, 6), (16,), DType.INT8, input_dynamic=True, input_granularity=PerToken()),
}


def reference_forward(module: SegLinear, x: torch.Tensor) -> torch.Tensor:
    """The formula of the module docstring, written out segment by segment."""
    spec = module.spec
    w = module.weight_codes.float() * module.weight_scale[:, module.weight_col_group]
    rows = x.reshape(-1, spec.in_features).float()
    outs, r0 = [], 0
    for s, n_s in enumerate(spec.output_segments):
        xs = rows / module.smooth[s] if module.smooth is not None else rows
        y, c0 = 0, 0
        for j, k_j in enumerate(spec.input_segments):
            part = xs[:, c0:c0 + k_j]
            if spec.input_dynamic:
                q = dynamic_fake_quant(part, spec.input_dtype, spec.input_granularity)
            elif spec.dual_scale:
                q = fake_quant_dualscale(part, module.input_scale[s, j], module.input_scale_neg[s, j], DType.INT8)
            else:
                q = fake_quant(part, module.input_scale[s, j], DType.INT8)
            y = y + q @ w[r0:r0 + n_s, c0:c0 + k_j].T
            c0 += k_j
        if module.lowrank_up is not None:
            t = (rows.half().float() @ module.lowrank_down[s].float().T).half()  # the branch's fp16 rounding
            y = y + t.float() @ module.lowrank_up[r0:r0 + n_s].float().T
        outs.append(y)
        r0 += n_s
    y = torch.cat(outs, -1) + (module.bias if module.bias is not None else 0)
    return y.reshape(*x.shape[:-1], spec.out_features)


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_matches_written_out_formula(name):
    module = filled(SPECS[name])
    if name == "segments":
        module.weight_col_group.copy_(torch.tensor([0] * 6 + [1] * 10))
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(module(x), reference_forward(module, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_never_modifies_input(name):
    module = filled(SPECS[name])
    x = torch.randn(2, 16)
    before = x.clone()
    module(x)
    assert torch.equal(x, before)


def test_buffers_state_dict_deepcopy_and_safetensors(tmp_path):
    module = filled(SPECS["segments"])
    names = set(module.state_dict())
    assert names == {"weight_codes", "weight_scale", "weight_col_group", "bias", "smooth", "input_scale",
                     "input_scale_neg", "lowrank_up", "lowrank_down"}
    assert not list(module.parameters())
    clone = copy.deepcopy(module)
    x = torch.randn(4, 16)
    assert torch.equal(clone(x), module(x))
    save_file(module.state_dict(), tmp_path / "m.safetensors")
    fresh = SegLinear(SPECS["segments"])
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert torch.equal(fresh(x), module(x))


def test_to_dtype_keeps_codes_and_scales_exact():
    spec = SegLinearSpec(16, 12, (12,), (16,), DType.FP8E4M3, weight_dtype=DType.FP8E4M3)
    module = SegLinear(spec)
    module.weight_codes.copy_(torch.randn(12, 16).to(torch.float8_e4m3fn))
    module.weight_scale.fill_(1.0 / 3.0)
    codes, scale = module.weight_codes.clone(), module.weight_scale.clone()
    half = module.to(torch.bfloat16)
    assert half.weight_codes.dtype == torch.float8_e4m3fn and torch.equal(half.weight_codes.float(), codes.float())
    assert half.weight_scale.dtype == torch.float32 and torch.equal(half.weight_scale, scale)
    assert half.bias.dtype == torch.bfloat16
    out = half(torch.randn(2, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 16 input features"):
        filled(SPECS["plain"])(torch.randn(2, 15))


def test_spec_segments_must_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        SegLinearSpec(16, 12, (5, 5), (16,), DType.INT8)
