"""The six SegPattern matchers, one small function each.

Every matcher takes one ``LinearCall`` of a ``CapturedGraph`` and returns a ``Match`` or None:

- ``match_linear_to_chunk`` / ``match_linear_to_split`` (output side): the linear's output, through
  transparent ops, is split along its feature dim. The pattern name follows the op that the user code
  called: ``chunk`` (also when export lowered it to ``split``/``split_with_sizes``, recognised by the
  node's ``torch_fn`` metadata) -> LINEAR2CHUNK; ``split``, ``split_with_sizes``, ``unbind``,
  ``tensor_split`` -> LINEAR2SPLIT.
- ``match_concat_to_linear``: the input is ``cat([...], dim=-1)`` of pieces of any (unequal) widths.
- ``match_stack_to_linear``: the input is ``stack([...], dim=-2)`` flattened into the last dim
  (contiguous segments). Stacking along the very last dim interleaves the inputs, which contiguous
  segments cannot express: not matched.
- ``match_reshape_to_linear``: the input is a view/reshape/flatten merging the last two dims
  ``(..., H, D) -> (..., H*D)`` (attention heads): H segments of D. Merges of a stacked tensor are
  left to ``match_stack_to_linear``; merges of three or more dims do not count.
- ``match_activation_to_linear``: the input is an activation output (SiLU, GELU exact/tanh, Mish),
  possibly multiplied elementwise by a same-shape gate (GEGLU/SwiGLU): DualScale (the kinds are listed in
  ``segquant.algorithms.dualscale``).

Only segmentation along the last (feature) dim counts; transparent ops are those of
``segquant.graph.walk``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from torch.fx import Node

from segquant.algorithms.dualscale import ACTIVATION_OPS, GATED_KINDS
from segquant.enums import SegPattern
from segquant.graph.capture import CapturedGraph, LinearCall
from segquant.graph.walk import (
    PASSTHROUGH,
    SPLIT_LIKE,
    VIEW_LIKE,
    cat_dim,
    opname,
    shape,
    split_dim,
    split_outputs,
    split_sizes,
    step_forward,
    walk_back,
)


@dataclass(frozen=True)
class Match:
    """What one pattern says about one linear call. Segment sizes are along the feature dim."""

    pattern: SegPattern
    output_segments: tuple[int, ...] = ()
    input_segments: tuple[int, ...] = ()
    activation: str | None = None


# ----------------------------------------------------------------------------------------------- output
def _elementwise_ok(cg: CapturedGraph) -> Callable[[Any, tuple], bool]:
    """Binary elementwise ops are looked through when the other operand is a scalar, depends only on
    parameters/constants (e.g. PixArt's ``scale_shift_table``), or is broadcast (a modulation), never
    for a same-shape activation (a residual add)."""

    def ok(other: Any, out: tuple) -> bool:
        if not isinstance(other, Node):
            return True
        if other not in cg.input_dependent:
            return True
        other_shape = shape(other)
        return other_shape is not None and math.prod(other_shape) < math.prod(out)

    return ok


def output_splits(call: LinearCall, cg: CapturedGraph, max_nodes: int = 256) -> list[tuple[Node, tuple]]:
    """Every split-like node that cuts the output features of ``call`` into contiguous segments.

    Breadth-first over the users of the linear node, through transparent ops. Returns
    ``(split_node, segment_sizes)`` pairs; sizes sum to ``call.out_features``.
    """
    found: list[tuple[Node, tuple]] = []
    queue, seen = deque([(call.node, (call.out_features,))]), {call.node}
    ok = _elementwise_ok(cg)
    while queue and len(seen) < max_nodes:
        node, block = queue.popleft()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            for nxt in _forward_successors(node, block, user, ok, found):
                queue.append(nxt)
    return found


def _forward_successors(node: Node, block: tuple, user: Node, ok: Callable, found: list) -> list[tuple]:
    name = opname(user)
    if name in SPLIT_LIKE and user.args[0] is node:
        src, dim, sizes = shape(node), split_dim(user), split_sizes(user)
        if src is None or dim is None or sizes is None:
            return []
        pos = dim - (len(src) - len(block))
        if pos < 0:  # split of a non-feature dim: every piece keeps the features
            return [(item, block) for item in split_outputs(user)]
        if pos == 0 and len(sizes) > 1:
            inner = math.prod(block[1:])
            found.append((user, tuple(s * inner for s in sizes)))
        return []
    if name == "native_dropout":
        return [(item, block) for item in split_outputs(user) if item.args[1] == 0]
    nb = step_forward(node, block, user, ok)
    return [] if nb is None else [(user, nb)]


def _called_as_chunk(split: Node) -> bool:
    if opname(split) in ("chunk", "unsafe_chunk"):
        return True
    torch_fn = split.meta.get("torch_fn")
    return bool(torch_fn) and str(torch_fn[1]).endswith(".chunk")


def _output_match(call: LinearCall, cg: CapturedGraph, pattern: SegPattern, chunk: bool) -> Match | None:
    segs = [s for node, s in output_splits(call, cg) if _called_as_chunk(node) == chunk]
    if not segs:
        return None
    return Match(pattern, output_segments=refine(segs))


def match_linear_to_chunk(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """linear -> (transparent ops) -> chunk along the feature dim: output segments."""
    return _output_match(call, cg, SegPattern.LINEAR2CHUNK, chunk=True)


def match_linear_to_split(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """linear -> (transparent ops) -> split/split_with_sizes/unbind along the feature dim."""
    return _output_match(call, cg, SegPattern.LINEAR2SPLIT, chunk=False)


def refine(segmentations: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Common refinement (union of boundaries) of segmentations of the same length."""
    bounds: set[int] = set()
    for segs in segmentations:
        bounds.update(_boundaries(segs))
    ordered = sorted(bounds)
    return tuple(b - a for a, b in zip([0] + ordered[:-1], ordered, strict=True))


def _boundaries(segs: tuple[int, ...]) -> list[int]:
    out, acc = [], 0
    for s in segs:
        acc += s
        out.append(acc)
    return out


# ------------------------------------------------------------------------------------------------ input
def match_concat_to_linear(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """cat([a, b, ...], dim=-1) -> (transparent ops) -> linear: one input segment per piece."""
    src = walk_back(call.input)
    if opname(src) not in ("cat", "concat", "concatenate"):
        return None
    out = shape(src)
    if out is None or cat_dim(src) != len(out) - 1:
        return None
    widths = [shape(t) for t in src.args[0]]
    segs = tuple(w[-1] for w in widths if w is not None and len(w) == len(out) and w[-1] > 0)
    if len(segs) < 2 or sum(segs) != call.in_features:
        return None
    return Match(SegPattern.CONCAT2LINEAR, input_segments=segs)


def _merge_of_last_two(node: Node, k: int) -> tuple[int, int] | None:
    """``(H, D)`` if ``node`` is a view-like op turning ``(..., H, D)`` into ``(..., H*D)`` (= k)."""
    if opname(node) not in VIEW_LIKE or not isinstance(node.args[0], Node):
        return None
    src, out = shape(node.args[0]), shape(node)
    if src is None or out is None or len(src) < 2 or not out:
        return None
    h, d = src[-2], src[-1]
    if h * d != k or out[-1] != k or h < 2 or d < 2 or math.prod(src[:-2]) != math.prod(out[:-1]):
        return None
    return h, d


def _stack_source(node: Node) -> Node | None:
    """The ``stack`` node that produced ``node`` (through pass-through ops), stacked along dim -2."""
    for _ in range(16):
        if opname(node) in PASSTHROUGH and isinstance(node.args[0], Node):
            node = node.args[0]
            continue
        break
    out = shape(node)
    if opname(node) != "stack" or out is None:
        return None
    dim = int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0))
    return node if (dim + len(out) if dim < 0 else dim) == len(out) - 2 else None


def match_reshape_to_linear(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """(..., H, D) -> view/reshape/flatten -> (..., H*D) -> linear: H input segments of D."""
    src = walk_back(call.input)
    hd = _merge_of_last_two(src, call.in_features)
    if hd is None or _is_stacked(src):
        return None
    h, d = hd
    return Match(SegPattern.RESHAPE2LINEAR, input_segments=(d,) * h)


def _is_stacked(merge: Node) -> bool:
    """True when the merged tensor comes from a ``stack`` (along any dim): that is the stack pattern's."""
    node = merge.args[0]
    for _ in range(16):
        if opname(node) in PASSTHROUGH and isinstance(node.args[0], Node):
            node = node.args[0]
            continue
        break
    return opname(node) == "stack"


def match_stack_to_linear(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """stack([x_1..x_n], dim=-2) -> flatten last two dims -> linear: n input segments of x_i's width."""
    src = walk_back(call.input)
    hd = _merge_of_last_two(src, call.in_features)
    if hd is None or _stack_source(src.args[0]) is None:
        return None
    n, d = hd
    return Match(SegPattern.STACK2LINEAR, input_segments=(d,) * n)


# ------------------------------------------------------------------------------------------- activation
def activation_name(node: Node) -> str | None:
    """``"silu"``, ``"gelu"``, ``"gelu_tanh"``, ``"mish"`` for an activation node, else None."""
    name = opname(node)
    if name == "gelu":
        approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return "gelu_tanh" if approx == "tanh" else "gelu"
    if name == "mul" and _is_decomposed_silu(node):
        return "silu"
    return ACTIVATION_OPS.get(name)


def _is_decomposed_silu(mul: Node) -> bool:
    """``x * sigmoid(x)``: SiLU as it appears after ATen decomposition."""
    a, b = (mul.args + (None, None))[:2]
    return any(opname(s) == "sigmoid" and s.args[0] is x for x, s in ((a, b), (b, a)) if isinstance(s, Node))


def _gated_activation(mul: Node) -> str | None:
    """For ``a * b`` with both operands full-shape: the gated name if one operand is an activation."""
    out = shape(mul)
    operands = [a for a in mul.args[:2] if isinstance(a, Node)]
    if len(operands) != 2 or any(shape(a) != out for a in operands):
        return None
    for operand in operands:
        act = activation_name(walk_back(operand))
        if act is not None:
            return GATED_KINDS.get(act, f"{act}_gated")
    return None


def match_activation_to_linear(call: LinearCall, cg: CapturedGraph) -> Match | None:
    """activation (or gate * activation) -> (transparent ops) -> linear: DualScale."""
    src = walk_back(call.input)
    act = activation_name(src)
    if act is None and opname(src) == "mul":
        act = _gated_activation(src)
    return None if act is None else Match(SegPattern.ACTIVATION2LINEAR, activation=act)


MATCHERS: dict[SegPattern, Callable[[LinearCall, CapturedGraph], Match | None]] = {
    SegPattern.LINEAR2CHUNK: match_linear_to_chunk,
    SegPattern.LINEAR2SPLIT: match_linear_to_split,
    SegPattern.CONCAT2LINEAR: match_concat_to_linear,
    SegPattern.STACK2LINEAR: match_stack_to_linear,
    SegPattern.RESHAPE2LINEAR: match_reshape_to_linear,
    SegPattern.ACTIVATION2LINEAR: match_activation_to_linear,
}
