"""Replay a denoiser's forward from CUDA graphs inside a stock diffusers pipeline.

An INT8 / INT4 denoiser launches a few Triton kernels per layer; called without a graph, the CPU cost of those
launches (0.16–0.27 ms per call on an H100 host, BENCHMARKS.md run 19) exceeds the GPU time of a batch-1 forward,
so the quantized model is slower than bf16 although its kernels are faster (FLUX.1-dev INT8 static, compiled:
194 ms without a graph, 99.6 ms replayed; bf16 136 ms). Captured in a CUDA graph the
whole forward is one launch. ``torch.compile(mode="reduce-overhead")`` on regionally compiled blocks would
do it per block, but PyTorch 2.11's CUDA-graph trees reject a block replayed with its own previous output
as input (pytorch#152887), so this module captures the whole forward instead:

    capture_cuda_graphs(pipe.transformer)     # in place; the pipeline is used as before
    images = pipe(prompt, num_inference_steps=28).images
    release_cuda_graphs(pipe.transformer)     # back to eager calls, graphs freed

Each distinct call signature (the pytree structure of the arguments, every tensor's shape / dtype / device /
strides, every other argument's value, and the inference-mode / grad-mode state) gets its own graph, captured at its first call after ``warmup``
eager calls on a side stream (Triton autotuning and segquant's per-shape kernel choice happen there, never
inside a capture); later calls copy their tensors into the graph's static inputs, replay it and return
copies of its outputs. Graphs share one memory pool. Calls whose tensors are not on a CUDA device run
eagerly. The forward must not branch on tensor values or synchronize with the CPU (diffusers'
transformers and UNets do neither).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Hashable

import torch
from torch import nn
from torch.utils import _pytree as pytree

_ATTRIBUTE = "_segquant_cuda_graphs"


@dataclass
class _Captured:
    """One captured forward: its static input leaves (tensors filled before each replay) and outputs."""

    graph: torch.cuda.CUDAGraph
    inputs: list[Any]
    outputs: Any


class _GraphedForward:
    """The ``forward`` installed on the module: graphs keyed by call signature, the eager forward kept."""

    def __init__(self, eager_forward, warmup: int):
        functools.update_wrapper(self, eager_forward)  # inspect.signature(module.forward) as before
        self.eager_forward = eager_forward
        self.warmup = warmup
        self.graphs: dict[Hashable, _Captured] = {}
        self.pool = None

    def __call__(self, *args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if not tensors or not all(t.is_cuda for t in tensors) or torch.cuda.is_current_stream_capturing():
            return self.eager_forward(*args, **kwargs)
        key = call_signature(leaves, spec), torch.is_inference_mode_enabled(), torch.is_grad_enabled()
        captured = self.graphs.get(key)
        if captured is None:
            captured = self.graphs[key] = self._capture(leaves, spec)
        for static, leaf in zip(captured.inputs, leaves):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
        captured.graph.replay()
        return pytree.tree_map_only(torch.Tensor, torch.clone, captured.outputs)

    def _capture(self, leaves: list[Any], spec) -> _Captured:
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.eager_forward(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.eager_forward(*args, **kwargs)
        return _Captured(graph, static, outputs)


def call_signature(leaves: list[Any], spec) -> Hashable:
    """What a captured graph depends on: the argument structure, each tensor's shape, dtype, device and strides,
    and the value of every other argument (which must be hashable)."""
    parts = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            parts.append((tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride()))
            continue
        try:
            hash(leaf)
        except TypeError:
            raise TypeError(f"capture_cuda_graphs: argument leaf {index} of type {type(leaf).__name__} is not "
                            "hashable, so calls cannot be matched to a captured graph") from None
        parts.append(leaf)
    return str(spec), tuple(parts)


def capture_cuda_graphs(module: nn.Module, warmup: int = 2) -> nn.Module:
    """Make ``module``'s forward replay CUDA graphs (see the module doc); returns ``module`` (changed in place).
    Calling it again on a module that already captures changes nothing."""
    if warmup < 1:
        raise ValueError(f"warmup must be at least 1 eager call before a capture, got {warmup}")
    if not hasattr(module, _ATTRIBUTE):
        graphed = _GraphedForward(module.forward, warmup)
        setattr(module, _ATTRIBUTE, graphed)
        module.forward = graphed
    return module


def release_cuda_graphs(module: nn.Module) -> nn.Module:
    """Undo :func:`capture_cuda_graphs`: eager forward again, captured graphs and their memory released."""
    graphed = module.__dict__.pop(_ATTRIBUTE, None)
    if graphed is not None:
        del module.forward
        graphed.graphs.clear()
    return module


def captured_graphs(module: nn.Module) -> int:
    """How many graphs ``module`` has captured (0 when it does not capture)."""
    graphed = getattr(module, _ATTRIBUTE, None)
    return len(graphed.graphs) if graphed is not None else 0
