"""Capture a model's static computation graph with ``torch.export`` and find its linear layers.

``torch.export.export(model, args, kwargs, strict=False)`` traces stock diffusers transformers (where
``torch.fx.symbolic_trace`` fails on their data-dependent Python) into an ATen graph whose nodes keep
``nn_module_stack``, which maps each ``aten.linear`` call back to the ``nn.Linear`` that made it.

Cost: export runs the model's Python on fake tensors, so no real FLOPs are spent. To keep even that
cheap for full-size models, and to leave the caller's model untouched, we first export a *meta shadow*:
a structural copy of the model whose parameters and buffers are empty tensors on the ``meta`` device
(no weight data is copied). If that fails (a model that reads tensor values, or cannot be deep-copied),
we export the real model on the given example.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, Node
from torch.utils._pytree import tree_map

from segquant.graph.walk import opname

logger = logging.getLogger("segquant.graph")


class GraphCaptureError(RuntimeError):
    """``torch.export`` could not capture the model; the message names the model class and the reason."""

    def __init__(self, model_class: str, reason: str):
        super().__init__(f"torch.export could not capture {model_class}: {reason}")
        self.model_class, self.reason = model_class, reason


@dataclass(frozen=True)
class LinearCall:
    """One call of an ``nn.Linear`` in the captured graph.

    ``node`` is the ``aten.linear``/``addmm``/``mm`` node, ``input`` the node holding its input
    activation ``(..., K)``; ``module_name`` the qualified name of the ``nn.Linear`` in the model.
    """

    node: Node
    input: Node
    module_name: str
    in_features: int
    out_features: int


@dataclass
class CapturedGraph:
    """The exported ATen graph of a model plus what the matchers need to read it."""

    graph: Graph
    model_class: str
    linear_calls: list[LinearCall]
    input_dependent: set[Node] = field(default_factory=set)  # nodes whose value depends on user inputs
    on_meta: bool = False


def normalize_example(example: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model(*args, **kwargs)`` from a Tensor, a tuple/list of positional args,
    a kwargs dict, or an explicit ``(args_tuple, kwargs_dict)`` pair."""
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, (tuple, list)):
        if len(example) == 2 and isinstance(example[0], (tuple, list)) and isinstance(example[1], dict):
            return tuple(example[0]), dict(example[1])
        return tuple(example), {}
    raise TypeError(f"example must be a Tensor, a tuple of args or a kwargs dict, not {type(example).__name__}")


def _to_meta(value: Any) -> Any:
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


def meta_shadow(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are empty ``meta`` tensors.

    No weight data is copied: the memo of ``copy.deepcopy`` maps every parameter/buffer to its meta twin.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    shadow = copy.deepcopy(model, memo)
    return shadow.eval()


#: Logs at ERROR with a traceback for every op that fails on fake tensors (an example that does not fit the model),
#: through a handler bound to the process's stderr: silenced during an export, whose failure is reported instead.
_FAKE_TENSOR_LOGGER = logging.getLogger("torch._subclasses.fake_tensor")


def _export(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """``torch.export.export(strict=False)``; what export prints to stderr (on failure it prints the
    partial graph) is logged at DEBUG instead, and the fake-tensor tracebacks are not printed."""
    buf = io.StringIO()
    disabled = _FAKE_TENSOR_LOGGER.disabled
    _FAKE_TENSOR_LOGGER.disabled = True
    try:
        with contextlib.redirect_stderr(buf), torch.no_grad():
            return torch.export.export(model, args, kwargs, strict=False)
    finally:
        _FAKE_TENSOR_LOGGER.disabled = disabled
        if buf.getvalue().strip():
            logger.debug("torch.export stderr for %s:\n%s", type(model).__name__, buf.getvalue())


def export_model(model: nn.Module, example: Any) -> tuple[torch.export.ExportedProgram, bool]:
    """Export ``model`` on ``example`` (meta shadow first, then the real model). Returns the program and
    whether it was captured on meta. Raises ``GraphCaptureError`` naming the model class and reason."""
    args, kwargs = normalize_example(example)
    name = type(model).__name__
    try:
        shadow = meta_shadow(model)
        margs, mkwargs = tree_map(_to_meta, (args, kwargs))
        return _export(shadow, margs, mkwargs), True
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the real model
        logger.debug("meta capture of %s failed (%s: %s); retrying on real tensors", name, type(exc).__name__, exc)
    try:
        return _export(model, args, kwargs), False
    except Exception as exc:  # noqa: BLE001
        raise GraphCaptureError(name, _first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _weight_placeholder(node: Node) -> Node | None:
    """The weight placeholder of a linear-like node (through the transpose of addmm/mm)."""
    name = opname(node)
    w = node.args[1] if name == "linear" else node.args[2] if name == "addmm" else node.args[1]
    while isinstance(w, Node) and w.op == "call_function" and opname(w) in ("t", "permute", "transpose"):
        w = w.args[0]
    return w if isinstance(w, Node) and w.op == "placeholder" else None


def _module_stack_name(node: Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def find_linear_calls(ep: torch.export.ExportedProgram, model: nn.Module) -> list[LinearCall]:
    """Every ``aten.linear``/``addmm``/``mm`` node whose weight is the ``weight`` of an ``nn.Linear``."""
    params = dict(ep.graph_signature.inputs_to_parameters)
    modules = dict(model.named_modules())
    calls = []
    for node in ep.graph.nodes:
        name = opname(node)
        if name not in ("linear", "addmm", "mm"):
            continue
        w = _weight_placeholder(node)
        pname = params.get(w.name) if w is not None else None
        if pname is None or not pname.endswith("weight"):
            continue
        mod_name = pname[: -len(".weight")] if pname != "weight" else ""
        if not isinstance(modules.get(mod_name), nn.Linear):
            continue
        stack_name = _module_stack_name(node)
        if stack_name is not None and stack_name != mod_name:
            logger.debug("linear node %s: module stack says %s, weight belongs to %s", node.name, stack_name, mod_name)
        inp = node.args[1] if name == "addmm" else node.args[0]
        lin = modules[mod_name]
        calls.append(LinearCall(node, inp, mod_name, lin.in_features, lin.out_features))
    return calls


def _input_dependent(ep: torch.export.ExportedProgram) -> set[Node]:
    """Nodes whose value depends on a user input (not only on parameters, buffers and constants)."""
    user_inputs = set(ep.graph_signature.user_inputs)
    dependent: set[Node] = set()
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in user_inputs:
                dependent.add(node)
        elif any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def captured_from_program(ep: torch.export.ExportedProgram, model: nn.Module, on_meta: bool = False) -> CapturedGraph:
    """Index an exported program of ``model`` (pre-dispatch or decomposed ATen) for the matchers."""
    dependent = _input_dependent(ep)
    calls = find_linear_calls(ep, model)
    logger.debug("captured %s: %d nodes, %d linear calls (meta=%s)", type(model).__name__,
                 len(ep.graph.nodes), len(calls), on_meta)
    return CapturedGraph(ep.graph, type(model).__name__, calls, dependent, on_meta)


def capture_graph(model: nn.Module, example: Any) -> CapturedGraph:
    """Export ``model`` on ``example`` and index its linear calls. Raises ``GraphCaptureError``."""
    ep, on_meta = export_model(model, example)
    return captured_from_program(ep, model, on_meta)


__all__ = ["CapturedGraph", "GraphCaptureError", "LinearCall", "capture_graph", "captured_from_program",
           "export_model", "find_linear_calls", "meta_shadow", "normalize_example"]
