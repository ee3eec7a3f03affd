"""sigmoid_form_gelus: tanh-GELUs computed as x·σ(2u), the same function to float32 rounding, only after quantize."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segquant import preset_dict, quantize, sigmoid_form_gelus
from segquant.errors import SigmoidFormBeforeQuantizeError
from segquant.models.activations import SigmoidFormGELU, gelu_tanh_sigmoid_form
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs


def output(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sigmoid_form_is_tanh_gelu_to_rounding(dtype):
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.randn(20000) * 3]).to(dtype)
    tanh_form = F.gelu(x.float(), approximate="tanh")
    sigmoid_form = gelu_tanh_sigmoid_form(x)
    assert sigmoid_form.dtype == dtype and sigmoid_form.shape == x.shape
    # a few ulp of the value (16-bit: the float32 result rounds to the same value or a neighbour), and 1e-6 absolute:
    # where tanh u rounds to -1 the tanh form cancels to 0 and the sigmoid form keeps the tail (≈ -1e-7 at x = -5)
    tolerance = 4 * torch.finfo(dtype).eps * tanh_form.abs() + 1e-6
    assert ((sigmoid_form.float() - tanh_form).abs() <= tolerance).all()
    assert not torch.equal(F.gelu(x.float()), tanh_form)  # the exact GELU is a different function: the check bites


def test_every_tanh_gelu_changes_and_exact_gelus_stay():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"), nn.GELU(), nn.Sequential(
        nn.GELU(approximate="tanh")))
    assert sigmoid_form_gelus(model) == 2
    assert isinstance(model[1], SigmoidFormGELU) and isinstance(model[3][0], SigmoidFormGELU)
    assert type(model[2]) is nn.GELU
    assert sigmoid_form_gelus(model) == 0  # nothing left to change


@pytest.mark.parametrize("name, expected_kinds", [("sd3", {"diffusers"}), ("flux", {"diffusers", "torch"}),
                                                  ("unet", set())])
def test_quantized_denoiser_keeps_its_output_and_state(name, expected_kinds):
    model, data = build_tiny_denoiser(name), [tiny_example_inputs(name, seed=s) for s in range(2)]
    quantize(model, data, preset_dict("w8a8"))
    keys, before = set(model.state_dict()), output(model, data[0])
    gelus_before = [m for m in model.modules() if isinstance(m, nn.GELU) or type(m).__name__ == "GELU"]
    changed = sigmoid_form_gelus(model)
    kinds = {"torch" if isinstance(m, nn.GELU) else "diffusers" for m in gelus_before
             if getattr(m, "approximate", None) == "tanh"}
    assert kinds == expected_kinds and (changed > 0) == bool(expected_kinds)
    assert set(model.state_dict()) == keys
    after = output(model, data[0])
    # the same function: the output moves only where a float32 rounding flips a quantization code downstream
    assert (after - before).norm() / before.norm() < 1e-3
    if expected_kinds:
        with pytest.raises(SigmoidFormBeforeQuantizeError, match="after quantize"):
            quantize(_fresh_with_sigmoid_form(name), data, preset_dict("w8a8"))


def _fresh_with_sigmoid_form(name):
    model = build_tiny_denoiser(name)
    sigmoid_form_gelus(model)
    return model
