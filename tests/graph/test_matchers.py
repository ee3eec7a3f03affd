"""Each SegPattern matcher on small hand-written modules, positive and negative cases."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segquant.enums import SegPattern
from segquant.graph import LayerSegments, find_layer_segments
from segquant.graph.matchers import refine

P = SegPattern
X = torch.randn(2, 5, 8)  # (B, S, K=8)


class Fn(nn.Module):
    """A module with linears ``a`` (8 -> out_a) and ``b`` (in_b -> 4) around a custom function."""

    def __init__(self, fn, out_a=12, in_b=12):
        super().__init__()
        self.a, self.b, self.fn = nn.Linear(8, out_a), nn.Linear(in_b, 4), fn

    def forward(self, x):
        return self.fn(self, x)


def run(fn, patterns=None, example=X, **sizes):
    return find_layer_segments(Fn(fn, **sizes), example, SegPattern.all() if patterns is None else patterns)


def out_segs(result, name="a"):
    return result[name].output_segments if name in result else None


# ------------------------------------------------------------------------------------- linear -> chunk
@pytest.mark.parametrize(
    "fn",
    [
        lambda m, x: sum(m.a(x).chunk(3, dim=-1)),
        lambda m, x: sum(m.a(x).chunk(3, 2)),
        lambda m, x: sum(torch.chunk(m.a(x), 3, dim=2)),
        lambda m, x: sum(torch.chunk(m.a(x), chunks=3, dim=-1)),
    ],
    ids=["kw_neg_dim", "positional_dim", "functional", "all_keywords"],
)
def test_chunk_last_dim(fn):
    r = run(fn)
    assert r == {"a": LayerSegments(output_segments=(4, 4, 4), matched=(P.LINEAR2CHUNK,))}


def test_chunk_unequal_and_through_transparent_ops():
    def fn(m, x):
        y = F.dropout(m.a(x).to(torch.float64).contiguous(), 0.0, training=False).float()
        y = y.reshape(10, 10)  # (2, 5, 10) -> (10, 10): keeps the feature dim
        p, q, r = y.chunk(3, dim=1)
        return p.sum() + q.sum() + r.sum()

    assert out_segs(run(fn, out_a=10)) == (4, 4, 2)


def test_chunk_of_non_feature_dim_does_not_match():
    r = run(lambda m, x: sum(m.a(x).chunk(2, dim=0)).sum() + sum(m.a(x).chunk(5, dim=1)).sum())
    assert "a" not in r


def test_chunk_after_residual_add_does_not_match():
    # a same-shape, input-dependent add is not transparent
    r = run(lambda m, x: sum((m.a(x) + m.a(x).sin()).chunk(3, dim=-1)))
    assert "a" not in r


def test_chunk_of_grouped_view_with_parameter_add():
    # PixArt style: (B, 3*D) -> view (B, 3, D) + table -> chunk(3, dim=1)
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.table = nn.Linear(8, 12), nn.Parameter(torch.randn(1, 3, 4))

        def forward(self, x):
            t = self.a(x).reshape(x.shape[0], 3, -1) + self.table
            s, sc, g = t.chunk(3, dim=1)
            inner = t.chunk(2, dim=-1)  # along the inner dim of the (3, 4) feature block: interleaved
            return s * sc + g + inner[0].sum()

    r = find_layer_segments(M(), torch.randn(2, 8))
    assert r == {"a": LayerSegments(output_segments=(4, 4, 4), matched=(P.LINEAR2CHUNK,))}


def test_chunk_along_inner_dim_of_grouped_view_does_not_match():
    r = run(lambda m, x: sum(m.a(x).view(2, 5, 3, 4).chunk(2, dim=-1)).sum())
    assert "a" not in r


# ------------------------------------------------------------------------------------- linear -> split
@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda m, x: sum(m.a(x).split(4, dim=-1)), (4, 4, 4)),
        (lambda m, x: sum(t.sum() for t in m.a(x).split([2, 6, 4], dim=2)), (2, 6, 4)),
        (lambda m, x: sum(t.sum() for t in torch.split(m.a(x), [3, 9], -1)), (3, 9)),
        (lambda m, x: sum(t.sum() for t in m.a(x).split(5, dim=-1)), (5, 5, 2)),
        (lambda m, x: sum(m.a(x).view(2, 5, 3, 4).unbind(dim=-2)), (4, 4, 4)),
    ],
    ids=["int_size", "sections", "functional_unequal", "int_size_remainder", "unbind_after_view"],
)
def test_split_last_dim(fn, expected):
    r = run(fn)
    assert r == {"a": LayerSegments(output_segments=expected, matched=(P.LINEAR2SPLIT,))}


def test_split_of_non_feature_dim_does_not_match():
    r = run(lambda m, x: sum(t.sum() for t in m.a(x).split([2, 3], dim=1)))
    assert r == {}


def test_output_consumers_are_refined_and_chunk_split_kept_apart():
    def fn(m, x):
        y = m.a(x)
        return sum(y.chunk(2, dim=-1)).sum() + sum(t.sum() for t in y.split([4, 8], dim=-1))

    r = run(fn)
    assert r["a"] == LayerSegments(output_segments=(4, 2, 6), matched=(P.LINEAR2CHUNK, P.LINEAR2SPLIT))
    only_split = run(fn, patterns=[P.LINEAR2SPLIT])
    assert only_split["a"] == LayerSegments(output_segments=(4, 8), matched=(P.LINEAR2SPLIT,))
    only_chunk = run(fn, patterns=["linear_to_chunk"])
    assert only_chunk["a"] == LayerSegments(output_segments=(6, 6), matched=(P.LINEAR2CHUNK,))


# --------------------------------------------------------------------------------------- cat -> linear
def test_concat_unequal_widths():
    def fn(m, x):
        return m.b(torch.cat([x[..., :3].sin(), x.cos()[..., :1], x], dim=-1).to(torch.float32))

    r = run(fn)
    assert r == {"b": LayerSegments(input_segments=(3, 1, 8), matched=(P.CONCAT2LINEAR,))}


def test_concat_positional_dim_and_cat_of_rows_through_split():
    # cat along the feature dim (positive index), then a split of the *sequence* dim (transparent)
    def fn(m, x):
        y = torch.cat([x, x[..., :4]], 2)
        head, tail = y.split([2, 3], dim=1)
        return m.b(tail).sum() + head.sum()

    assert run(fn)["b"].input_segments == (8, 4)


@pytest.mark.parametrize("dim", [0, 1, -2])
def test_concat_along_other_dims_does_not_match(dim):
    def fn(m, x):
        return m.b(torch.cat([x, x], dim=dim))

    r = run(fn, in_b=8)
    assert "b" not in r


# ------------------------------------------------------------------------------------- stack -> linear
def test_stack_then_flatten():
    def fn(m, x):
        return m.b(torch.stack([x[..., :4], x[..., 4:].exp(), x[..., 2:6]], dim=-2).flatten(-2))

    r = run(fn)
    assert r == {"b": LayerSegments(input_segments=(4, 4, 4), matched=(P.STACK2LINEAR,))}


def test_stack_along_last_dim_interleaves_and_does_not_match():
    def fn(m, x):
        return m.b(torch.stack([x[..., :6], x[..., 2:]], dim=-1).flatten(-2))

    r = run(fn)
    assert "b" not in r


# ----------------------------------------------------------------------------------- reshape -> linear
@pytest.mark.parametrize(
    "merge",
    [
        lambda t: t.transpose(1, 2).reshape(2, 5, 12),
        lambda t: t.permute(0, 2, 1, 3).flatten(2, 3),
        lambda t: t.transpose(1, 2).contiguous().view(2, -1, 12).to(torch.float32),
    ],
    ids=["transpose_reshape", "permute_flatten", "contiguous_view_cast"],
)
def test_reshape_merging_heads(merge):
    def fn(m, x):
        heads = m.a(x).view(2, 5, 3, 4).transpose(1, 2)  # (B, H=3, S, D=4)
        return m.b(merge(F.scaled_dot_product_attention(heads, heads, heads)))

    r = run(fn)
    assert r == {"b": LayerSegments(input_segments=(4, 4, 4), matched=(P.RESHAPE2LINEAR,))}


@pytest.mark.parametrize(
    "fn",
    [
        lambda m, x: m.b(m.a(x).view(10, 12)),  # merges leading dims only, keeps the last dim
        lambda m, x: m.b(m.a(x).view(2, 5, 2, 2, 3).flatten(2)),  # merges three dims
        lambda m, x: m.b(m.a(x).reshape(2, 60).reshape(2, 5, 12)),  # splits a flat dim, merges nothing
        lambda m, x: m.b(m.a(x).view(2, 5, 2, 6).transpose(-1, -2)[..., 0].repeat(1, 1, 6)),  # no merge
    ],
    ids=["keeps_last_dim", "three_dims", "split_flat_dim", "transpose_no_merge"],
)
def test_reshape_negative(fn):
    r = run(fn, patterns=SegPattern.seg())
    assert "b" not in r


# -------------------------------------------------------------------------------- activation -> linear
@pytest.mark.parametrize(
    "act, name",
    [
        (F.silu, "silu"),
        (nn.SiLU(), "silu"),
        (F.gelu, "gelu"),
        (nn.GELU(approximate="tanh"), "gelu_tanh"),
        (F.mish, "mish"),
    ],
)
def test_activation(act, name):
    r = run(lambda m, x: m.b(F.dropout(act(m.a(x)), 0.1, training=False).to(torch.float32)))
    assert r == {"b": LayerSegments(dual_scale_activation=name, matched=(P.ACTIVATION2LINEAR,))}


@pytest.mark.parametrize(
    "gate, name",
    [
        (lambda h, g: h * F.gelu(g), "geglu"),
        (lambda h, g: F.gelu(g, approximate="tanh") * h, "geglu_tanh"),
        (lambda h, g: F.silu(h) * g, "swiglu"),
    ],
)
def test_gated_activation(gate, name):
    def fn(m, x):
        h, g = m.a(x).chunk(2, dim=-1)
        return m.b(gate(h, g))

    r = run(fn, out_a=24)
    assert r["b"] == LayerSegments(dual_scale_activation=name, matched=(P.ACTIVATION2LINEAR,))
    assert r["a"].output_segments == (12, 12)


@pytest.mark.parametrize(
    "fn",
    [
        lambda m, x: m.b(F.layer_norm(F.silu(m.a(x)), (12,))),
        lambda m, x: m.b(F.gelu(m.a(x)) + m.a(x)),
        lambda m, x: m.b(F.silu(m.a(x)) * 0.5),
        lambda m, x: m.b(F.relu(m.a(x))),
        lambda m, x: m.b(F.silu(m.a(x)).sum(-1, keepdim=True).expand(2, 5, 12)),
    ],
    ids=["norm_between", "residual_add", "scalar_mul", "relu", "reduction"],
)
def test_activation_negative(fn):
    r = run(fn)
    assert "b" not in r


def test_patterns_not_requested():
    def fn(m, x):
        h, g = m.a(x).chunk(2, dim=-1)
        return m.b(h * F.gelu(g))

    assert set(run(fn, out_a=24)) == {"a", "b"}
    assert run(fn, patterns=SegPattern.seg(), out_a=24) == {
        "a": LayerSegments(output_segments=(12, 12), matched=(P.LINEAR2CHUNK,))
    }
    assert run(fn, patterns=[P.ACTIVATION2LINEAR], out_a=24) == {
        "b": LayerSegments(dual_scale_activation="geglu", matched=(P.ACTIVATION2LINEAR,))
    }
    assert run(fn, patterns=[], out_a=24) == {}


def test_shared_linear_called_twice_merges_calls():
    def fn(m, x):
        first = m.b(F.silu(m.a(x)))
        return m.b(torch.cat([first.repeat(1, 1, 2), m.a(x)[..., :4]], dim=-1))

    r = run(fn)
    assert r["b"] == LayerSegments(
        input_segments=(8, 4), dual_scale_activation="silu", matched=(P.CONCAT2LINEAR, P.ACTIVATION2LINEAR)
    )


def test_example_forms_agree():
    def fn(m, x):
        return sum(m.a(x).chunk(3, dim=-1))

    model = Fn(fn)
    expected = find_layer_segments(model, X)
    assert expected and find_layer_segments(model, (X,)) == expected
    assert find_layer_segments(model, {"x": X}) == expected
    assert find_layer_segments(model, ((), {"x": X})) == expected


# ------------------------------------------------------------------------------------------- utilities
def test_refine():
    assert refine([(6, 6)]) == (6, 6)
    assert refine([(6, 6), (4, 4, 4)]) == (4, 2, 2, 4)
    assert refine([(3, 9), (3, 9)]) == (3, 9)


def test_layer_segments_dict_round_trip():
    seg = LayerSegments((4, 4), (2, 6), "geglu", (P.LINEAR2CHUNK, P.ACTIVATION2LINEAR))
    d = json.loads(json.dumps(seg.to_dict()))
    assert d == {"output_segments": [4, 4], "input_segments": [2, 6], "dual_scale_activation": "geglu",
                 "matched": ["linear_to_chunk", "activation_to_linear"]}
    assert LayerSegments.from_dict(d) == seg
    assert LayerSegments.from_dict({}) == LayerSegments()
    with pytest.raises(ValueError, match="segmnets"):
        LayerSegments.from_dict({"segmnets": [1]})
    with pytest.raises(ValueError, match="linear_to_nothing"):
        LayerSegments.from_dict({"matched": ["linear_to_nothing"]})
