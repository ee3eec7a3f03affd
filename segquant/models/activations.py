"""tanh-GELU in its sigmoid form, for the compiled GPU model: ``x · σ(2u)`` instead of ``x/2 · (1 + tanh u)``.

The two are the same function (``(1 + tanh u) / 2 = σ(2u)``, ``u = √(2/π) (x + 0.044715 x³)``); computed in float32
they agree within a few ulp of the value and 5e-7 absolute (in the negative tail the tanh form cancels to 0 where the
sigmoid form keeps the tail); after the next layer's 8-bit quantizer about one code in a million differs. What differs
is the kernel ``torch.compile`` makes of "GELU, then the next layer's 8-bit quantizer": with ``libdevice.tanh``
(dozens of instructions per element) that kernel is bound by arithmetic, not memory (77 µs for 151 MB at SD3.5 / FLUX
feed-forward sizes on an H200, where the quantizer alone streams at 3.75 TB/s); with an exponential and a division it
takes 57–60 µs, and the compiled FP8 SD3.5-medium runs 0.56–0.75 ms faster per call (BENCHMARKS.md run 14).

Call :func:`sigmoid_form_gelus` **after** :func:`segquant.quantize` (and after ``load_quantized``): the graph search
recognizes a tanh-GELU by its ATen op, which decides the DualScale of the layer it feeds; ``quantize`` refuses a model
whose GELUs are already in this form (:class:`segquant.errors.SigmoidFormBeforeQuantizeError`).

    quantize(transformer, calib, {**preset_dict("w8a8_fp8"), "fuse_projections": True}, backend="gpu")
    sigmoid_form_gelus(transformer)        # returns how many GELUs it changed
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segquant.errors import SigmoidFormBeforeQuantizeError

#: ``2 · √(2/π)``: ``σ(2u)`` with ``u = √(2/π) (x + 0.044715 x³)``.
_TWO_SQRT_2_OVER_PI = 1.5957691216057308
_CUBIC = 0.044715


def gelu_tanh_sigmoid_form(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")`` as ``x · σ(2u)``, computed in float32, returned in ``x``'s dtype (any
    shape)."""
    h = x.float()
    return (h * torch.sigmoid(_TWO_SQRT_2_OVER_PI * (h + _CUBIC * h * h * h))).to(x.dtype)


class SigmoidFormGELU(nn.Module):
    """``nn.GELU(approximate="tanh")`` computed by :func:`gelu_tanh_sigmoid_form`."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu_tanh_sigmoid_form(x)


def _tanh_gelu(module: nn.Module) -> bool:
    """A torch ``nn.GELU`` or a diffusers ``GELU`` (projection + activation) with the tanh approximation, not yet
    in the sigmoid form."""
    return ((isinstance(module, nn.GELU) or _is_diffusers_gelu(module)) and module.approximate == "tanh"
            and not _in_sigmoid_form(module))


def _in_sigmoid_form(module: nn.Module) -> bool:
    """What :func:`sigmoid_form_gelus` made: a :class:`SigmoidFormGELU`, or a diffusers ``GELU`` computing with
    :func:`gelu_tanh_sigmoid_form`."""
    return isinstance(module, SigmoidFormGELU) or module.__dict__.get("gelu") is gelu_tanh_sigmoid_form


def _is_diffusers_gelu(module: nn.Module) -> bool:
    return type(module).__name__ == "GELU" and type(module).__module__.startswith("diffusers.")


def sigmoid_form_gelus(model: nn.Module) -> int:
    """Compute every tanh-GELU of ``model`` in the sigmoid form, in place; returns how many were changed.

    A torch ``nn.GELU(approximate="tanh")`` (FLUX's single blocks) is replaced by :class:`SigmoidFormGELU`; a
    diffusers ``GELU`` (the feed-forward's projection + activation) keeps its projection and computes its activation
    with :func:`gelu_tanh_sigmoid_form`. State-dict keys are unchanged; exact GELUs are left alone.
    """
    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not _tanh_gelu(child):
                continue
            if isinstance(child, nn.GELU):
                setattr(parent, name, SigmoidFormGELU())
            else:
                child.gelu = gelu_tanh_sigmoid_form  # diffusers' GELU.forward calls self.gelu(projected)
            changed += 1
    return changed


def refuse_sigmoid_form(model: nn.Module) -> None:
    """Raise :class:`SigmoidFormBeforeQuantizeError` if :func:`sigmoid_form_gelus` already ran on ``model``."""
    changed = [name for name, module in model.named_modules() if _in_sigmoid_form(module)]
    if changed:
        raise SigmoidFormBeforeQuantizeError(
            f"{type(model).__name__} has {len(changed)} GELUs in the sigmoid form (e.g. {changed[0]!r}); the graph "
            "search recognizes a tanh-GELU by its op, so quantize the original model and call "
            "segquant.sigmoid_form_gelus after quantize()")
