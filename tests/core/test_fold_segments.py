"""``input_quant.fold_segments``: static per-segment input scales folded into the smoothing vector. The input is
quantized exactly as with segments (same codes), the layer stays accurate, and the GPU sees a plain GEMM (one input
scale along K). What folding costs against per-segment scales in the GEMM (the weight is rounded with the segment
scales in it) is measured on the demo models (BENCHMARKS.md)."""

import copy

import pytest
import torch
from torch import nn

from segquant import load_quantized, quantize, save_quantized
from segquant.errors import ConfigError
from segquant.kernels.layout import layout_of
from segquant.kernels.quant import per_channel
from segquant.kernels.reference import quantize_input

STATIC = {"input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False},
          "weight_quant": {"type": "int8", "granularity": "channel"}, "opt": {"type": "smooth", "alpha": 0.5},
          "search_patterns": ["concat_to_linear", "activation_to_linear"]}


def config(fold: bool = True, patterns: list[str] | None = None) -> dict:
    layer = copy.deepcopy(STATIC)
    layer["input_quant"]["fold_segments"] = fold
    if patterns is not None:
        layer["search_patterns"] = patterns
    return {"default": layer}


class TwoStreams(nn.Module):
    """``cat([a, b]) -> linear``: two input segments whose ranges differ by 100x, then a GELU-fed layer."""

    def __init__(self):
        super().__init__()
        self.proj, self.act, self.down = nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 8)

    def forward(self, a, b):
        return self.down(self.act(self.proj(torch.cat([a, b], dim=-1))))


def batches(n: int = 8, rows: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(rows, 16) * 0.05, torch.randn(rows, 32) * 5.0) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = TwoStreams().eval()
    data = batches()
    runs = {name: quantize(copy.deepcopy(model), data, cfg, example=data[0])
            for name, cfg in (("folded", config()), ("segmented", config(fold=False)),
                              ("plain", config(fold=False, patterns=["activation_to_linear"])))}
    return model, runs


def test_the_plan_folds_the_static_segments_and_not_dualscale(quantized):
    _, runs = quantized
    layer = runs["folded"].segquant_plan.layers["proj"]
    spec = layer.spec()
    assert layer.input_segments == (16, 32) and spec.input_segments == (48,)
    assert spec.folded_input_segments == (16, 32) and "2 segments" not in runs["folded"].segquant_plan.table()
    assert "16+32 folded" in runs["folded"].segquant_plan.table()
    assert not runs["folded"].segquant_plan.layers["down"].spec().folded_input_segments  # DualScale (GELU) keeps its own


def test_folded_input_codes_equal_the_segmented_codes(quantized):
    _, runs = quantized
    folded, segmented = runs["folded"].proj, runs["segmented"].proj
    x = torch.cat([torch.randn(64, 16) * 0.05, torch.randn(64, 32) * 5.0], dim=-1)
    codes = quantize_input(x, folded.canonical_buffers(), folded.spec, 0)
    scales = per_channel(segmented.input_scale, segmented.spec.input_segments)[0]
    assert torch.equal(folded.input_scale, torch.ones(1, 1))
    assert torch.equal(codes, torch.round(quantize_input(x, segmented.canonical_buffers(), segmented.spec, 0) / scales))
    assert codes.abs().max() <= 128 and codes[:, :16].abs().max() > 64  # the small stream uses its own range


def test_the_folded_layer_stays_accurate(quantized):
    """Folding moves the small segment's precision from the input (its own scale, as segmented) to the weight
    (rounded with the large segment's scale in the same row): some error, of the order of the segmented layer's."""
    model, runs = quantized
    x = torch.cat([torch.randn(64, 16) * 0.05, torch.randn(64, 32) * 5.0], dim=-1)
    with torch.no_grad():
        reference = model.proj(x)
        errors = {name: float((q.proj(x) - reference).norm() / reference.norm()) for name, q in runs.items()}
    assert errors["folded"] < 0.03 and errors["folded"] < 2 * errors["segmented"]


def test_the_folded_layer_is_a_plain_gemm_for_the_gpu(quantized):
    _, runs = quantized
    folded, segmented = layout_of(runs["folded"].proj), layout_of(runs["segmented"].proj)
    assert segmented.input_varies and segmented.scale_mode > 0
    assert not folded.input_varies and folded.scale_mode == 0


def test_a_folded_model_saves_and_loads_bitwise(quantized, tmp_path):
    model, runs = quantized
    save_quantized(runs["folded"], tmp_path / "q")
    restored = load_quantized(copy.deepcopy(model), tmp_path / "q")
    a, b = torch.randn(8, 16) * 0.05, torch.randn(8, 32) * 5.0
    with torch.no_grad():
        assert torch.equal(restored(a, b), runs["folded"](a, b))


def test_fold_segments_needs_static_symmetric_inputs():
    bad = config()
    bad["default"]["input_quant"].update(dynamic=True, granularity="token")
    with pytest.raises(ConfigError, match="fold_segments: only static"):
        quantize(TwoStreams(), batches(1), bad, example=batches(1)[0])


def test_weight_groups_inside_segments_absorb_the_folded_scales():
    """Where every weight group lies inside one input segment (heads of 64 / 128 channels, groups of 64), a group's
    scale takes its segment's input scale along: round-to-nearest codes are unchanged and the layer computes the
    same; GPTQ's damping is not scale-free, so its codes move a little and its error hardly."""
    torch.manual_seed(0)
    model = nn.Linear(256, 48)
    halves = [(torch.randn(32, 128) * 0.05, torch.randn(32, 128) * 5.0) for _ in range(8)]

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = model

        def forward(self, a, b):
            return self.proj(torch.cat([a, b], dim=-1))

    def quantized(fold: bool, calib: str) -> nn.Module:
        layer = {"opt": {"type": "svd", "alpha": 0.5, "low_rank": 8}, "calib": {"type": calib},
                 "input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False, "fold_segments": fold},
                 "weight_quant": {"type": "int4", "granularity": "group", "group_size": 64},
                 "search_patterns": ["concat_to_linear"]}
        return quantize(copy.deepcopy(Cat()), halves, {"default": layer}, example=halves[0]).proj

    x = torch.cat([torch.randn(64, 128) * 0.05, torch.randn(64, 128) * 5.0], dim=-1)
    with torch.no_grad():
        reference = model(x)
        for calib in ("amax", "gptq"):
            folded, segmented = quantized(True, calib), quantized(False, calib)
            assert folded.spec.folded_input_segments == (128, 128) and folded.spec.weight_scale_columns == 4
            errors = [float((q(x) - reference).norm() / reference.norm()) for q in (folded, segmented)]
            if calib == "amax":
                assert torch.equal(folded.weight_codes, segmented.weight_codes)
                assert errors[0] == pytest.approx(errors[1], rel=1e-4)
            else:
                assert errors[0] < 1.02 * errors[1]
