"""Following a linear layer's feature dimension through an exported ATen graph.

A linear layer's output features (size N) or input features (size K) live in the *last* dim of the
tensor next to it. Between that tensor and the op that decides a pattern (a ``chunk``, a ``cat``, a
head-merging ``reshape``, an activation, ...) there are usually *transparent* ops: dtype casts,
dropout, ``contiguous``/``clone``, views and reshapes that keep the feature block intact, slices of
other dims. This module knows which ops are transparent and how they move the feature block.

A *feature block* is a tuple of sizes ``block`` such that the features occupy the trailing
``len(block)`` dims of a tensor in row-major order (``prod(block)`` = N). A view can turn ``(B, 6*D)``
into ``(B, 6, D)``: the block becomes ``(6, D)``; a split along the block's *outermost* dim then cuts
the features into contiguous segments, a split along an inner dim does not.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterator, Sequence

import torch
from torch.fx import Node

# Ops whose output is the (cast/copied) input, same shape: always transparent.
PASSTHROUGH = frozenset(
    {"_to_copy", "to", "clone", "contiguous", "alias", "detach", "dropout", "type_as", "lift_fresh_copy",
     "_conj", "identity", "feature_dropout", "alpha_dropout"}
)
# Row-major reshapes: the flattened element order is unchanged.
VIEW_LIKE = frozenset({"view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze"})
# Ops that pick along one dim: transparent when that dim is outside the feature block.
DIM_PICK = frozenset({"slice", "select", "narrow"})
PERMUTE_LIKE = frozenset({"permute", "transpose", "t", "swapaxes", "movedim"})
SPLIT_LIKE = frozenset({"chunk", "split", "split_with_sizes", "unbind", "tensor_split", "unsafe_split",
                        "unsafe_split_with_sizes", "unsafe_chunk"})
ELEMENTWISE_BINARY = frozenset({"add", "sub", "mul", "div"})


def opname(node: Node) -> str | None:
    """The ATen op name of a ``call_function`` node (``"chunk"`` for ``aten.chunk.default``),
    ``"getitem"`` for tuple indexing, ``None`` for placeholders/outputs/other callables."""
    if not isinstance(node, Node) or node.op != "call_function":
        return None
    target = node.target
    if target is operator.getitem:
        return "getitem"
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", None)


def shape(node: Any) -> tuple[int, ...] | None:
    """Static shape of a node's tensor value (``meta["val"]``), or None when it is not one tensor."""
    if not isinstance(node, Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        try:
            return tuple(int(s) for s in val.shape)
        except (TypeError, ValueError):  # unbacked symbolic sizes
            return None
    return None


def split_sizes(node: Node) -> list[int] | None:
    """Sizes along the split dim of every output of a split-like node (from its ``meta["val"]``)."""
    vals = node.meta.get("val")
    dim = split_dim(node)
    src = shape(node.args[0])
    if not isinstance(vals, (list, tuple)) or dim is None or src is None:
        return None
    if opname(node) == "unbind":
        return [1] * len(vals)
    return [int(v.shape[dim]) for v in vals]


def arg(node: Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of ``node``, given positionally at ``index`` or as a keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def norm_dim(dim: int, ndim: int) -> int:
    """Non-negative dim index (``-1`` -> ``ndim - 1``)."""
    return dim + ndim if dim < 0 else dim


def split_dim(node: Node) -> int | None:
    """Normalised dim along which a split-like node splits its input."""
    src = shape(node.args[0])
    if src is None:
        return None
    index = 1 if opname(node) == "unbind" else 2
    return norm_dim(int(arg(node, index, "dim", 0)), len(src))


def cat_dim(node: Node) -> int | None:
    """Normalised concatenation dim of a ``cat``/``concat``/``concatenate`` node (w.r.t. its output)."""
    out = shape(node)
    return None if out is None else norm_dim(int(arg(node, 1, "dim", 0)), len(out))


def _reshape_block(in_shape: Sequence[int], out_shape: Sequence[int], block: tuple[int, ...]) -> tuple | None:
    """Feature block of ``out_shape`` after a row-major reshape, or None if the block gets mixed."""
    n, lead = math.prod(block), math.prod(in_shape[: len(in_shape) - len(block)])
    for k in range(1, len(out_shape) + 1):
        tail = math.prod(out_shape[len(out_shape) - k:])
        if tail == n and math.prod(out_shape[: len(out_shape) - k]) == lead:
            return tuple(out_shape[len(out_shape) - k:])
        if tail > n:
            break
    return None


def _permutation(node: Node, ndim: int) -> list[int] | None:
    name = opname(node)
    if name == "permute":
        return [norm_dim(int(d), ndim) for d in arg(node, 1, "dims")]
    if name in ("transpose", "swapaxes", "t"):
        d0, d1 = (0, 1) if name == "t" else (int(arg(node, 1, "dim0")), int(arg(node, 2, "dim1")))
        perm = list(range(ndim))
        if ndim >= 2:
            a, b = norm_dim(d0, ndim), norm_dim(d1, ndim)
            perm[a], perm[b] = perm[b], perm[a]
        return perm
    return None  # movedim: treated as opaque


def step_forward(node: Node, block: tuple[int, ...], user: Node, elementwise_ok: Any = None) -> tuple | None:
    """If ``user`` (a consumer of ``node``) keeps the feature block intact, return its block in ``user``.

    ``elementwise_ok(other)`` is consulted for binary elementwise ops: it decides whether the *other*
    operand may be looked through (e.g. a parameter or a broadcast modulation). None disables them.
    """
    name, src, out = opname(user), shape(node), shape(user)
    if src is None or out is None or not user.args or (user.args[0] is not node and name not in ELEMENTWISE_BINARY):
        return None
    k = len(block)
    if name in PASSTHROUGH:
        return block if out == src else None
    if name in VIEW_LIKE:
        return _reshape_block(src, out, block)
    if name == "expand":
        return block if tuple(out[len(out) - k:]) == block else None
    if name in DIM_PICK:
        dim = norm_dim(int(arg(user, 1, "dim", 0)), len(src))
        return block if dim < len(src) - k else None
    if name in PERMUTE_LIKE:
        perm = _permutation(user, len(src))
        tail = list(range(len(src) - k, len(src)))
        return block if perm is not None and perm[len(src) - k:] == tail else None
    if name in ELEMENTWISE_BINARY and elementwise_ok is not None:
        others = [a for a in user.args[:2] if a is not node]
        if len(others) == 1 and tuple(out[len(out) - k:]) == block and elementwise_ok(others[0], out):
            return block
    return None


def split_outputs(split: Node) -> Iterator[Node]:
    """The ``getitem`` users of a multi-output node."""
    return (u for u in split.users if opname(u) == "getitem")


def step_backward(node: Node) -> Node | None:
    """For a node whose last dim holds a linear layer's input features (a 1-dim feature block), return
    the producer that holds the same features in *its* last dim, if ``node`` is transparent."""
    name, out = opname(node), shape(node)
    if name is None:
        return None
    if name == "getitem":
        return _backward_through_split(node)
    if out is None or not node.args or not isinstance(node.args[0], Node):
        return None
    src_node = node.args[0]
    src = shape(src_node)
    if src is None or not src or not out:
        return None
    if name in PASSTHROUGH:
        return src_node if src == out else None
    if name in VIEW_LIKE or name == "expand":
        same_rows = name == "expand" or math.prod(src[:-1]) == math.prod(out[:-1])
        return src_node if src[-1] == out[-1] and same_rows else None
    if name in DIM_PICK:
        dim = norm_dim(int(arg(node, 1, "dim", 0)), len(src))
        return src_node if dim < len(src) - 1 else None
    if name in PERMUTE_LIKE:
        perm = _permutation(node, len(src))
        return src_node if perm is not None and perm[-1] == len(src) - 1 else None
    return None


def _backward_through_split(item: Node) -> Node | None:
    """``getitem`` of a split along a non-feature dim (or of ``native_dropout``) -> the split's input."""
    parent = item.args[0]
    if not isinstance(parent, Node):
        return None
    pname = opname(parent)
    if pname == "native_dropout" and item.args[1] == 0:
        return parent.args[0]
    if pname in SPLIT_LIKE:
        src = shape(parent.args[0])
        dim = split_dim(parent)
        if src is not None and dim is not None and dim < len(src) - 1:
            return parent.args[0]
    return None


def walk_back(node: Node, max_steps: int = 64) -> Node:
    """Follow ``step_backward`` from ``node`` to the first non-transparent producer."""
    for _ in range(max_steps):
        prev = step_backward(node)
        if prev is None:
            return node
        node = prev
    return node
