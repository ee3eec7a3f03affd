"""Save and load quantized models: ``model.safetensors`` + ``segquant_plan.json`` in a folder.

``load_quantized(skeleton, path)`` rebuilds the ``SegLinear`` layers of the plan on an unquantized model
of the same architecture (e.g. built from its config, random or original weights) and loads every
tensor, so outputs are bitwise identical to the saved model's.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from segquant.conversion import check_backends, set_plan_backends
from segquant.nn.seglinear import SegLinear
from segquant.plan import QuantPlan

WEIGHTS_NAME = "model.safetensors"
PLAN_NAME = "segquant_plan.json"


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write the quantized ``model`` (from :func:`segquant.quantize`) to the folder ``path``."""
    from safetensors.torch import save_model

    plan = getattr(model, "segquant_plan", None)
    if not isinstance(plan, QuantPlan):
        raise ValueError("model has no segquant_plan: quantize it with segquant.quantize() first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path / WEIGHTS_NAME))
    plan.save_json(path / PLAN_NAME)
    return path


def load_quantized(model: nn.Module, path: str | Path, backend: str | None = None) -> nn.Module:
    """Turn the unquantized ``model`` into the quantized model saved at ``path`` (in place) and return it.

    Every ``SegLinear`` then runs on ``backend``, or on its backend from the saved plan (see
    :func:`segquant.conversion.layer_backend`), which packs its own layout from the loaded buffers.
    """
    from safetensors.torch import load_model

    path = Path(path)
    for name in (WEIGHTS_NAME, PLAN_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path / name)!r} is missing: is {str(path)!r} a save_quantized folder?")
    plan = QuantPlan.from_dict(json.loads((path / PLAN_NAME).read_text()))
    check_backends(model, plan.enabled_layers(), backend)
    for layer in plan.enabled_layers():
        try:
            linear = model.get_submodule(layer.name)
        except AttributeError:
            raise ValueError(f"the model has no layer {layer.name!r} from the saved plan: wrong architecture?")
        if not isinstance(linear, nn.Linear) or (linear.out_features, linear.in_features) != (
                layer.out_features, layer.in_features):
            raise ValueError(f"layer {layer.name!r} is {linear} in the model but "
                             f"{layer.out_features}x{layer.in_features} linear in the saved plan")
        model.set_submodule(layer.name, SegLinear(layer.spec(), device=linear.weight.device,
                                                  dtype=linear.weight.dtype))
    load_model(model, str(path / WEIGHTS_NAME), strict=True)
    set_plan_backends(model, plan, backend)
    model.segquant_plan = plan
    return model
