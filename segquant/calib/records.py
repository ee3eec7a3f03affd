"""Calibration records: one recorded denoiser call, its metadata, (de)serialisation and batching.

A *record* is the full keyword-normalised call of the recorded module: a dict ``name -> value`` whose
values are tensors, JSON scalars (None, bool, int, float, str) or dicts/lists/tuples of those (e.g.
``added_cond_kwargs``, ``block_controlnet_hidden_states``). Its info says where it
was taken: prompt, denoising step, scheduler timestep, guidance branch of every batch row (a
:class:`~segquant.pipeline.steps.StepInfo`, the type every denoiser tap yields).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from segquant.errors import CalibrationError
from segquant.pipeline.steps import StepInfo, first_tensor

# Arguments that never carry a batch dimension (FLUX position ids, (S, 3)): kept once when batching.
UNBATCHED_NAMES = frozenset({"txt_ids", "img_ids"})


def RecordInfo(prompt_id: int, step_index: int, timestep: float, branches: tuple[str, ...],  # noqa: N802
               call_index: int = 0) -> StepInfo:
    """The :class:`~segquant.pipeline.steps.StepInfo` of a record: every row belongs to trajectory
    ``prompt_id`` (one prompt per recorded pipeline call). Records are described by plain ``StepInfo``
    objects (``info.prompt_id``, ``step_index``, ``timestep``, ``branches``, ``call_index``); this
    constructor keeps the calibration API's name."""
    branches = tuple(branches)
    return StepInfo(int(step_index), float(timestep), branches, (int(prompt_id),) * len(branches), int(call_index))


def info_to_row(info: StepInfo) -> list[Any]:
    """Manifest row ``[prompt_id, step_index, timestep, "uncond,cond", call_index]`` of a record's info."""
    return [info.prompt_id, info.step_index, info.timestep, ",".join(info.branches), info.call_index]


def info_from_row(row: list[Any]) -> StepInfo:
    """Inverse of ``info_to_row``."""
    pid, step, t, branches, call = row
    return RecordInfo(int(pid), int(step), float(t), tuple(branches.split(",")) if branches else (), int(call))


def tree_copy(tree: Any, device: str | torch.device = "cpu") -> Any:
    """Detached copies of every tensor of a nested call on ``device`` (always a copy, never a view)."""
    if isinstance(tree, Tensor):
        return tree.detach().to(device=device, copy=True)
    if isinstance(tree, dict):
        return {k: tree_copy(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_copy(v, device) for v in tree)
    return tree


def encode_tree(tree: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """JSON skeleton of a record; tensors go to ``tensors`` under fresh keys ``t0, t1, ...``.

    Every node is a one-key dict: ``{"t": key}`` tensor, ``{"d": {...}}`` dict, ``{"l": [...]}``
    list, ``{"u": [...]}`` tuple, ``{"v": value}`` JSON scalar. Other values raise
    ``CalibrationError`` naming their path.
    """
    if isinstance(tree, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = tree
        return {"t": key}
    if isinstance(tree, dict):
        bad = [k for k in tree if not isinstance(k, str)]
        if bad:
            raise CalibrationError(f"record entry {path or '<root>'}: dict keys must be strings, got {bad!r}")
        return {"d": {k: encode_tree(v, tensors, f"{path}.{k}" if path else k) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        items = [encode_tree(v, tensors, f"{path}[{i}]") for i, v in enumerate(tree)]
        return {"l" if isinstance(tree, list) else "u": items}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"v": tree}
    raise CalibrationError(
        f"record entry {path!r} has a value of type {type(tree).__name__}, which cannot be stored "
        "(only tensors, None, bool, int, float, str and dicts/lists/tuples of them)"
    )


def decode_tree(node: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of ``encode_tree``."""
    (tag, value), = node.items()
    if tag == "t":
        return tensors[value]
    if tag == "d":
        return {k: decode_tree(v, tensors) for k, v in value.items()}
    if tag in ("l", "u"):
        items = [decode_tree(v, tensors) for v in value]
        return items if tag == "l" else tuple(items)
    return value


def describe_tree(tree: Any, path: str = "") -> dict[str, Any]:
    """Flat ``path -> {"shape", "dtype"}`` (tensors) or ``path -> value`` (scalars) summary of a record."""
    if isinstance(tree, Tensor):
        return {path: {"shape": list(tree.shape), "dtype": str(tree.dtype).replace("torch.", "")}}
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(describe_tree(v, f"{path}.{k}" if path else k))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(describe_tree(v, f"{path}[{i}]"))
        return out
    return {path: tree}


def record_rows(record: dict[str, Any]) -> int:
    """Batch rows of a record: dim 0 of its first tensor (its main input), 1 for a 0-d tensor."""
    main = first_tensor(record)
    return int(main.shape[0]) if main is not None and main.ndim > 0 else 1


def _merge_tensors(values: list[Tensor], rows: list[int], path: str) -> Tensor:
    first = values[0]
    name = path.rsplit(".", 1)[-1]
    try:
        if name not in UNBATCHED_NAMES and all(v.ndim > 0 and v.shape[0] == r for v, r in zip(values, rows)):
            return torch.cat(values, 0)
        if all(torch.equal(first, v) for v in values[1:]):
            return first
        if all(v.numel() == 1 for v in values):  # e.g. the UNet's 0-d timestep: one value per row
            return torch.cat([v.reshape(1).expand(r) for v, r in zip(values, rows)])
    except RuntimeError as exc:
        raise CalibrationError(f"cannot batch record entry {path!r}: {exc}") from None
    shapes = [tuple(v.shape) for v in values]
    raise CalibrationError(f"cannot batch record entry {path!r}: values differ and have no batch dimension {shapes}")


def _merge(values: list[Any], rows: list[int], path: str) -> Any:
    first = values[0]
    if isinstance(first, Tensor):
        if not all(isinstance(v, Tensor) for v in values):
            raise CalibrationError(f"cannot batch record entry {path!r}: a tensor in some records only")
        return _merge_tensors(values, rows, path)
    if isinstance(first, dict):
        if any(not isinstance(v, dict) or v.keys() != first.keys() for v in values):
            raise CalibrationError(f"cannot batch record entry {path or '<root>'!r}: records have different keys")
        return {k: _merge([v[k] for v in values], rows, f"{path}.{k}" if path else k) for k in first}
    if isinstance(first, (list, tuple)):
        if any(not isinstance(v, (list, tuple)) or len(v) != len(first) for v in values):
            raise CalibrationError(f"cannot batch record entry {path!r}: lists of different lengths")
        merged = [_merge([v[i] for v in values], rows, f"{path}[{i}]") for i in range(len(first))]
        return merged if isinstance(first, list) else tuple(merged)
    if any(v != first for v in values[1:]):
        raise CalibrationError(
            f"cannot batch record entry {path!r}: non-tensor values differ across the batch {values!r}"
        )
    return first


def collate_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch records into one call: tensors with a batch dimension (dim 0 = the record's rows) are
    concatenated on dim 0; tensors without one (``UNBATCHED_NAMES``, constants) must be equal and are
    kept once; one-element tensors that differ (the UNet's 0-d timestep) become one value per row;
    non-tensor values must be equal. Nested dicts/lists are merged recursively.
    Raises ``CalibrationError`` naming the entry that cannot be batched.
    """
    if not records:
        raise CalibrationError("cannot batch an empty list of records")
    if len(records) == 1:
        return records[0]
    return _merge(list(records), [record_rows(r) for r in records], "")
