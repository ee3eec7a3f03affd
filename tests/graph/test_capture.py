"""Graph capture: example forms, meta shadow, module-name mapping, decomposed graphs, failures."""

import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segquant.enums import SegPattern
from segquant.graph import GraphCaptureError, LayerSegments, capture_graph, find_layer_segments
from segquant.graph.capture import captured_from_program, meta_shadow, normalize_example
from segquant.graph.patterns import match_graph


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mod = nn.Linear(8, 24)
        self.ff = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.register_buffer("offset", torch.zeros(8))

    def forward(self, x, emb=None):
        shift, scale, gate = self.mod(F.silu(emb)).chunk(3, dim=-1)
        h = x * (1 + scale[:, None]) + shift[:, None] + self.offset
        return x + gate[:, None] * self.ff(h)


EXAMPLE = (torch.randn(2, 5, 8), torch.randn(2, 8))


def test_normalize_example():
    t = torch.zeros(1)
    assert normalize_example(t) == ((t,), {})
    assert normalize_example((t, 3)) == ((t, 3), {})
    assert normalize_example([t]) == ((t,), {})
    assert normalize_example({"x": t}) == ((), {"x": t})
    assert normalize_example(((t,), {"y": t})) == ((t,), {"y": t})
    with pytest.raises(TypeError, match="str"):
        normalize_example("not an example")


def test_capture_maps_linear_calls_and_leaves_model_untouched():
    model = Block().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    cg = capture_graph(model, EXAMPLE)
    assert cg.on_meta and cg.model_class == "Block"
    assert [(c.module_name, c.in_features, c.out_features) for c in cg.linear_calls] == [
        ("mod", 8, 24), ("ff.0", 8, 16), ("ff.2", 16, 8)
    ]
    assert model.training  # the mode of the caller's model is kept
    assert [id(p) for p in model.parameters()] == params
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_meta_shadow_copies_no_data():
    model = Block()
    shadow = meta_shadow(model)
    assert shadow is not model
    assert all(p.is_meta for p in shadow.parameters()) and all(b.is_meta for b in shadow.buffers())
    assert [n for n, _ in shadow.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert not any(p.is_meta for p in model.parameters())


def test_find_layer_segments_on_block():
    r = find_layer_segments(Block(), EXAMPLE)
    assert r == {
        "mod": LayerSegments((8, 8, 8), (), "silu", (SegPattern.LINEAR2CHUNK, SegPattern.ACTIVATION2LINEAR)),
        "ff.2": LayerSegments((), (), "gelu", (SegPattern.ACTIVATION2LINEAR,)),
    }


class MetaHostile(Block):
    """Reads a tensor value in Python: only works on real tensors."""

    def forward(self, x, emb=None):
        if x.device.type == "meta":
            raise RuntimeError("no meta here")
        return super().forward(x, emb)


def test_falls_back_to_real_tensors_when_meta_fails():
    cg = capture_graph(MetaHostile(), EXAMPLE)
    assert not cg.on_meta
    assert [c.module_name for c in cg.linear_calls] == ["mod", "ff.0", "ff.2"]


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: cannot be exported
            return self.lin(x).chunk(2, dim=-1)[0]
        return x


def test_capture_failure_warns_and_returns_empty(caplog, capsys):
    with pytest.raises(GraphCaptureError, match="DataDependent") as info:
        capture_graph(DataDependent(), torch.ones(2, 8))
    assert info.value.model_class == "DataDependent" and "data-dependent" in info.value.reason
    with caplog.at_level(logging.WARNING, logger="segquant.graph"):
        assert find_layer_segments(DataDependent(), torch.ones(2, 8)) == {}
    warnings = [r for r in caplog.records if r.name == "segquant.graph" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "DataDependent" in message and "data-dependent" in message and "without segments" in message
    assert "def forward" not in capsys.readouterr().err  # export's partial-graph dump is not printed


def test_wrong_example_warns_and_returns_empty(caplog):
    with caplog.at_level(logging.WARNING, logger="segquant.graph"):
        assert find_layer_segments(Block(), torch.randn(3, 3)) == {}
    assert any("Block" in r.getMessage() for r in caplog.records if r.name == "segquant.graph")


def test_wrong_example_prints_one_line_not_tracebacks():
    """torch logs a traceback per op that fails on fake tensors, to the stderr of a process without pytest's
    logging capture; a user sees only the one-line warning."""
    script = ("import torch\nfrom segquant.graph import find_layer_segments\n"
              "m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))\n"
              "assert find_layer_segments(m, torch.randn(4, 15)) == {}\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert "Traceback" not in run.stderr
    assert "could not capture the graph of Sequential" in run.stderr and "[4, 15] X [16, 32]" in run.stderr


def test_decomposed_graph_addmm_and_chunk_lowered_to_split():
    """After ATen decomposition linear becomes addmm/mm and chunk becomes split_with_sizes; the
    matchers still find the layers, and name the chunk by the op the user called."""
    model = Block()
    ep = torch.export.export(model, EXAMPLE, strict=False).run_decompositions()
    ops = {str(n.target) for n in ep.graph.nodes}
    assert "aten.linear.default" not in ops and "aten.chunk.default" not in ops
    cg = captured_from_program(ep, model)
    assert [c.module_name for c in cg.linear_calls] == ["mod", "ff.0", "ff.2"]
    assert match_graph(cg, SegPattern.all()) == find_layer_segments(model, EXAMPLE)


def test_nonlinear_weights_are_ignored():
    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.w = nn.Conv1d(4, 4, 1), nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return F.linear(self.conv(x).transpose(1, 2), self.w).chunk(2, dim=-1)[0]

    cg = capture_graph(Conv(), torch.randn(2, 4, 3))
    assert cg.linear_calls == []
    assert find_layer_segments(Conv(), torch.randn(2, 4, 3)) == {}
