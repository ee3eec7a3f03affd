"""Save and load quantized models (the folder's files: :mod:`segquant.checkpoint_files`).

    save_quantized(quantized, "ckpt")             # weights, plan, model class + config, manifest
    model = load_quantized("ckpt")                # no model needed: rebuilt on the meta device
    model = load_quantized(skeleton, "ckpt")      # or into an unquantized model of the same architecture
    pipe.transformer = model                      # drops into a stock diffusers pipeline

Without a model, the diffusers class named in ``segquant_model.json`` is built from its config on the
meta device (no memory, no init), its planned ``nn.Linear`` layers become meta ``SegLinear`` layers, and
every tensor of ``model.safetensors`` is read one by one straight onto ``device`` and assigned: peak
host memory stays near the checkpoint size. With a model, every check runs before it is changed, so a
failure leaves it untouched (except that a checkpoint of a model with fused q / k / v projections,
:func:`segquant.fuse_projections`, fuses the given model first: an exact change, its outputs stay the same).
Outputs are bitwise identical to the saved model's. Every failure raises a
named error (:mod:`segquant.errors`) naming the file and what was expected: missing file, damaged file
(SHA-256 manifest, ``verify=False`` skips the check), newer format version, mismatched architecture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segquant.checkpoint_files import (FORMAT_VERSION, MANIFEST_NAME, MODEL_NAME, PLAN_NAME, WEIGHTS_NAME,
                                       check_folder, read_json, read_tensors, tensor_shapes, verify_checkpoint,
                                       write_manifest)
from segquant.conversion import check_backends, set_plan_backends
from segquant.enums import DType
from segquant.errors import CheckpointMismatchError, CorruptCheckpointError
from segquant.models.fusion import DROPPED_ATTRIBUTE, repeat_fusion
from segquant.nn.seglinear import SegLinear
from segquant.numerics import pack_int4, two_level_split
from segquant.plan import QuantPlan

__all__ = ["MANIFEST_NAME", "MODEL_NAME", "PLAN_NAME", "WEIGHTS_NAME", "load_quantized", "save_quantized",
           "verify_checkpoint"]


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
    (path / MODEL_NAME).write_text(json.dumps(_model_description(model), indent=1))
    write_manifest(path)
    return path


def load_quantized(model: nn.Module | str | Path, path: str | Path | None = None, backend: str | None = None,
                   verify: bool = True, device: torch.device | str = "cpu") -> nn.Module:
    """The quantized model saved at ``path``: ``load_quantized(folder)`` or ``load_quantized(model, folder)``.

    ``model``: an unquantized model of the saved architecture, turned into the quantized one in place
    (tensors keep its devices and dtypes); omitted, the model is rebuilt from the folder with its tensors
    on ``device`` in their saved dtypes. ``verify``: check the SHA-256 of the files against the manifest
    first; ``backend``: run every SegLinear with this kernel backend (``None``: each layer's configured one).
    """
    if path is None:
        model, path = None, model
    path = Path(path)
    version = check_folder(path, verify)
    plan = _read_plan(path / PLAN_NAME)
    description = _read_description(path, version)
    target = _build_empty_model(path, description) if model is None else model
    _match_fusion(target, description.get("dropped_layers"), path)
    _check_tensors(target, plan, tensor_shapes(path / WEIGHTS_NAME), version, path / WEIGHTS_NAME)
    check_backends(target, plan.enabled_layers(), backend)  # fail before the model is changed
    tensors = read_tensors(path / WEIGHTS_NAME, device if model is None else "cpu")
    if version < 2:
        _pack_legacy_int4(tensors, plan)
    if version < 3:
        _convert_format_2(tensors, plan)
    for layer in plan.enabled_layers():
        linear = target.get_submodule(layer.name)
        target.set_submodule(layer.name, SegLinear(layer.spec(), device=linear.weight.device,
                                                   dtype=linear.weight.dtype))
    target.load_state_dict(tensors, strict=True, assign=model is None)
    _check_materialized(target, path)
    set_plan_backends(target, plan, backend)
    target.segquant_plan = plan
    return target


def _model_description(model: nn.Module) -> dict[str, Any]:
    """``segquant_model.json``: the diffusers class name and config (``class: None`` for other models) and the
    projections :func:`segquant.models.fusion.fuse_projections` dropped (``None``: not fused)."""
    config = getattr(model, "config", None)
    dropped = getattr(model, DROPPED_ATTRIBUTE, None)
    if not (hasattr(type(model), "from_config") and hasattr(model, "to_json_string") and config is not None):
        return {"format_version": FORMAT_VERSION, "class": None, "config": None, "dropped_layers": dropped}
    return {"format_version": FORMAT_VERSION, "class": type(model).__name__,
            "config": json.loads(model.to_json_string()), "dropped_layers": dropped}


def _read_description(path: Path, version: int) -> dict[str, Any]:
    """The folder's ``segquant_model.json`` (``{}`` before format 2, which did not write it)."""
    file = path / MODEL_NAME
    description = read_json(file, "the model description written by save_quantized") if version >= 2 else {}
    if not isinstance(description, dict):
        raise CorruptCheckpointError(f"{str(file)!r} is not the model description written by save_quantized")
    return description


def _match_fusion(model: nn.Module, dropped: list[str] | None, path: Path) -> None:
    """Fuse ``model``'s projections as the saved model's were (:func:`~segquant.models.fusion.repeat_fusion`)
    unless it already is; raise :class:`CheckpointMismatchError` if it is fused and the checkpoint is not, or
    fused with other projections dropped."""
    have = getattr(model, DROPPED_ATTRIBUTE, None)
    if dropped is not None and have is None:
        try:
            repeat_fusion(model, dropped)
        except (TypeError, ValueError) as err:
            raise CheckpointMismatchError(f"the model saved in {str(path)!r} had its q/k/v projections fused; "
                                          f"this model cannot be fused the same way: {err}") from err
    elif have != dropped and (have is not None or dropped is not None):
        saved = "not fused" if dropped is None else f"fused, {len(dropped)} projections dropped"
        raise CheckpointMismatchError(f"the model's q/k/v projections are fused ({len(have or ())} dropped) but the "
                                      f"model saved in {str(path)!r} was {saved}: pass an unfused model")


def _build_empty_model(path: Path, description: dict[str, Any]) -> nn.Module:
    """The diffusers model described by the folder's ``segquant_model.json``, parameters on the meta device."""
    file = path / MODEL_NAME
    name = description.get("class")
    if name is None:
        raise CheckpointMismatchError(f"{str(path)!r} does not say how to build its model (not a diffusers model, "
                                      "or saved by an older segquant): pass the unquantized model, "
                                      "load_quantized(model, folder)")
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and hasattr(cls, "from_config")):
        raise CheckpointMismatchError(f"{str(file)!r} names model class {name!r}, which this diffusers "
                                      f"{diffusers.__version__} does not have")
    try:
        with torch.device("meta"):
            return cls.from_config(description["config"]).eval()
    except (TypeError, ValueError, KeyError) as err:
        raise CorruptCheckpointError(f"{str(file)!r}: cannot build {name} from the saved config "
                                     f"({type(err).__name__}: {err})") from err


def _read_plan(file: Path) -> QuantPlan:
    data = read_json(file, "the plan written by save_quantized")
    try:
        return QuantPlan.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptCheckpointError(f"{str(file)!r} is not a valid segquant plan ({type(err).__name__}: {err}); "
                                     "expected the plan written by save_quantized") from err


def _check_tensors(model: nn.Module, plan: QuantPlan, saved: dict[str, tuple[int, ...]], version: int,
                   file: Path) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``saved`` (name -> shape) is exactly the state of
    ``model`` with the plan's SegLinear layers: nothing is changed before this passes."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for layer in plan.enabled_layers():
        linear = _planned_linear(model, layer)
        expected = {name: shape for name, shape in expected.items() if not name.startswith(layer.name + ".")}
        skeleton = SegLinear(layer.spec(), device="meta")
        if version < 2 and layer.spec().weight_dtype is DType.INT4:
            skeleton.weight_codes = torch.empty(linear.out_features, linear.in_features, device="meta")
        if version < 3 and skeleton.weight_steps is not None:
            skeleton.weight_scale, skeleton.weight_steps = skeleton.weight_steps.float(), None
        expected.update({f"{layer.name}.{name}": tuple(t.shape) for name, t in skeleton.state_dict().items()})
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    wrong = sorted(name for name in set(expected) & set(saved) if expected[name] != saved[name])
    if missing or unexpected or wrong:
        details = [f"{what}: {names[:5]}{' ...' if len(names) > 5 else ''}" for what, names in
                   (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        shapes = "; ".join(f"{name}: saved {saved[name]}, model {expected[name]}" for name in wrong[:3])
        raise CheckpointMismatchError(f"the tensors of {str(file)!r} do not fit the model rebuilt from the plan "
                                      f"(wrong architecture?): {'; '.join(details)}" + (f" ({shapes})" if shapes
                                                                                        else ""))


def _planned_linear(model: nn.Module, layer: Any) -> nn.Linear:
    """The model's ``nn.Linear`` that the plan's ``layer`` quantizes (checked against the plan)."""
    try:
        linear = model.get_submodule(layer.name)
    except AttributeError as err:
        raise CheckpointMismatchError(f"the model has no layer {layer.name!r} from the saved plan: wrong "
                                      "architecture?") from err
    if not isinstance(linear, nn.Linear) or (linear.out_features, linear.in_features) != (
            layer.out_features, layer.in_features):
        raise CheckpointMismatchError(f"layer {layer.name!r} is {linear} in the model but "
                                      f"{layer.out_features}x{layer.in_features} linear in the saved plan: "
                                      "wrong architecture?")
    return linear


def _pack_legacy_int4(tensors: dict[str, torch.Tensor], plan: QuantPlan) -> None:
    """Format 1 held int4 codes unpacked in int8 ``(N, K)``: pack them (in place) to ``(N, ⌈K/2⌉)`` uint8."""
    for layer in plan.enabled_layers():
        if layer.spec().weight_dtype is DType.INT4:
            key = f"{layer.name}.weight_codes"
            tensors[key] = pack_int4(tensors[key])


def _convert_format_2(tensors: dict[str, torch.Tensor], plan: QuantPlan) -> None:
    """Format 2 held two-level INT4 scales as float32 group scales ``(N, G)`` and the low-rank ``D_s`` without
    the smoothing: split the scales into ``weight_steps`` and row bases ``(N, 1)``, fold ``1/λ_s`` into
    ``D_s`` (in place)."""
    for layer in plan.enabled_layers():
        spec, prefix = layer.spec(), layer.name + "."
        if spec.weight_two_level:
            parts = two_level_split(tensors[prefix + "weight_scale"])
            if parts is None:
                raise CorruptCheckpointError(f"{prefix}weight_scale: the plan says two-level INT4 scales, the "
                                             "saved scales are not")
            tensors[prefix + "weight_steps"], tensors[prefix + "weight_scale"] = parts
        if spec.low_rank and spec.smooth:
            down = tensors[prefix + "lowrank_down"]
            tensors[prefix + "lowrank_down"] = (down.float() / tensors[prefix + "smooth"][:, None, :]).to(down.dtype)


def _check_materialized(model: nn.Module, path: Path) -> None:
    """Raise if a tensor of the rebuilt model is still on the meta device (a buffer the file cannot hold)."""
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointMismatchError(f"{str(path)!r}: {left[:5]} are not in the checkpoint (non-persistent "
                                      "buffers?): pass the unquantized model, load_quantized(model, folder)")
