"""capture_cuda_graphs: the signature that keys a graph, eager fallback off the GPU, and (on a GPU) replay that
matches the eager forward call after call."""

import copy
import inspect

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from segquant.pipeline.cuda_graph import call_signature, capture_cuda_graphs, captured_graphs, release_cuda_graphs
from segquant.pipeline.steps import forward_signature


class TinyDenoiser(nn.Module):
    """Keyword arguments, an optional dict of tensors and a tuple output, as diffusers' denoisers have."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, hidden_states, timestep, added_cond_kwargs=None, return_dict=True):
        out = self.proj(hidden_states) * timestep[:, None, None]
        if added_cond_kwargs is not None:
            out = out + added_cond_kwargs["text_embeds"][:, None, :]
        return {"sample": out} if return_dict else (out,)


def _signature(*args, **kwargs):
    return call_signature(*pytree.tree_flatten((args, kwargs)))


def test_signature_separates_what_a_graph_depends_on():
    x, t = torch.zeros(2, 4, 8), torch.ones(2)
    base = _signature(x, t, return_dict=False)
    assert base == _signature(torch.ones(2, 4, 8), torch.zeros(2), return_dict=False)  # values do not matter
    assert base != _signature(torch.zeros(2, 5, 8), t, return_dict=False)  # shape
    assert base != _signature(x.half(), t, return_dict=False)  # dtype
    assert base != _signature(x.transpose(1, 2).contiguous().transpose(1, 2), t, return_dict=False)  # strides
    assert base != _signature(x, t, return_dict=True)  # a non-tensor argument's value
    assert base != _signature(x, timestep=t, return_dict=False)  # the structure of the call
    with pytest.raises(TypeError, match="leaf 2 of type set is not hashable"):
        _signature(x, t, {1, 2})


def test_off_the_gpu_the_forward_runs_eagerly_and_release_restores_it():
    model = TinyDenoiser()
    x, t = torch.randn(2, 4, 8), torch.rand(2)
    expected = model(x, t, return_dict=False)[0]
    assert capture_cuda_graphs(model) is model and capture_cuda_graphs(model) is model
    assert list(inspect.signature(model.forward).parameters) == ["hidden_states", "timestep", "added_cond_kwargs",
                                                                 "return_dict"]
    assert torch.equal(model(x, t, return_dict=False)[0], expected)
    assert captured_graphs(model) == 0
    release_cuda_graphs(model)
    assert not hasattr(model, "_segquant_cuda_graphs") and "forward" not in model.__dict__
    assert torch.equal(model(x, t, return_dict=False)[0], expected)
    with pytest.raises(ValueError, match="warmup"):
        capture_cuda_graphs(model, warmup=0)


def test_the_denoiser_tap_sees_the_same_forward_signature():
    model = TinyDenoiser()
    before = forward_signature(model)
    assert forward_signature(capture_cuda_graphs(model)) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replayed_graphs_match_the_eager_forward():
    eager = TinyDenoiser().cuda()
    model = capture_cuda_graphs(copy.deepcopy(eager))
    for _ in range(4):  # one capture, then replays with new inputs
        x, t = torch.randn(2, 4, 8, device="cuda"), torch.rand(2, device="cuda")
        cond = {"text_embeds": torch.randn(2, 8, device="cuda")}
        torch.testing.assert_close(model(x, t, added_cond_kwargs=cond)["sample"],
                                   eager(x, t, added_cond_kwargs=cond)["sample"])
    first = model(torch.randn(2, 4, 8, device="cuda"), torch.rand(2, device="cuda"), return_dict=False)[0]
    kept = first.clone()
    model(torch.randn(2, 4, 8, device="cuda"), torch.rand(2, device="cuda"), return_dict=False)
    model(torch.randn(3, 4, 8, device="cuda"), torch.rand(3, device="cuda"), return_dict=False)
    assert torch.equal(first, kept)  # a returned output is a copy, not the graph's buffer
    assert captured_graphs(model) == 3  # with added_cond_kwargs, without (batch 2), batch 3
