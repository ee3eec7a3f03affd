"""CPU twin of the GPU W8A8 path (packing + quantizer + reference GEMM) against the emulated SegLinear."""

from dataclasses import replace

import pytest
import torch

from segquant.enums import DType
from segquant.kernels.gemm_reference import EXACT_DEPTH, integer_products, scale_tile_k, scaled_gemm_reference
from segquant.kernels.gpu.plan import pack_tensors, seglinear_forward
from segquant.kernels.layout import layout_of
from segquant.kernels.reference import integer_exact
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import PerGroup, PerTensor, PerToken, pack_int4
from tests.core.test_seglinear import filled as filled_int8


def filled(spec: SegLinearSpec, seed: int = 0) -> SegLinear:
    """A SegLinear with random codes and buffers (never zeros): the core tests' filler, plus FP8 codes,
    per-input-segment weight scale columns and a smaller low-rank branch."""
    module = filled_int8(spec, seed)
    g = torch.Generator().manual_seed(seed + 1)
    n, k = spec.out_features, spec.in_features
    if spec.weight_dtype is DType.FP8E4M3:
        module.weight_codes.copy_((torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn))
    if spec.weight_dtype is DType.INT4:
        module.weight_codes.copy_(pack_int4(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)))
    segments = torch.tensor(spec.input_segments)
    if spec.weight_scale_columns == len(segments):  # per-channel scales of each input segment
        module.weight_col_group.copy_(torch.arange(len(segments)).repeat_interleave(segments))
    elif spec.weight_scale_columns > 1:  # per-group scales: equal groups along K
        groups = spec.weight_scale_columns
        module.weight_col_group.copy_(torch.arange(groups).repeat_interleave(k // groups))
    if module.weight_steps is not None:  # two-level: integer steps 1..16 of the row base in weight_scale
        module.weight_steps.copy_(torch.randint(1, 17, module.weight_steps.shape, generator=g))
    if module.lowrank_down is not None:
        module.lowrank_down.mul_(0.1)
    return module


def pack(module: SegLinear) -> SegLinear:
    for name, tensor in pack_tensors(module).items():
        module.register_buffer(name, tensor, persistent=False)
    return module


I8, F8 = DType.INT8, DType.FP8E4M3
SPECS = {
    "plain": SegLinearSpec(96, 40, (40,), (96,), I8),
    "plain_fp8": SegLinearSpec(96, 40, (40,), (96,), F8, weight_dtype=F8),
    "heads": SegLinearSpec(128, 24, (24,), (32,) * 4, I8, weight_scale_columns=4),
    "cat_unequal": SegLinearSpec(96, 16, (16,), (32, 64), F8, weight_dtype=F8, weight_scale_columns=2),
    "dual": SegLinearSpec(64, 20, (20,), (64,), I8, dual_scale=True),
    "dual_fp8_segments": SegLinearSpec(64, 20, (20,), (32, 32), F8, weight_dtype=F8, dual_scale=True),
    "adaln": SegLinearSpec(32, 48, (16, 16, 16), (32,), I8, smooth=True, low_rank=3),
    "out_segments_nosmooth": SegLinearSpec(32, 48, (16, 32), (32,), I8),
    "folded_heads": SegLinearSpec(128, 24, (24,), (128,), I8, folded_input_segments=(32,) * 4),
    "folded_fp8_out_segments": SegLinearSpec(64, 64, (32, 32), (64,), F8, weight_dtype=F8,
                                             folded_input_segments=(32, 32)),
    "dynamic": SegLinearSpec(64, 20, (20,), (64,), I8, input_dynamic=True, input_granularity=PerToken()),
    "dynamic_segments_smooth": SegLinearSpec(64, 32, (16, 16), (32, 32), F8, weight_dtype=F8, input_dynamic=True,
                                             input_granularity=PerToken(), smooth=True, weight_scale_columns=2),
    "dynamic_dual": SegLinearSpec(64, 20, (20,), (64,), I8, input_dynamic=True, input_granularity=PerToken(),
                                  dual_scale=True),
    "dynamic_tensor": SegLinearSpec(64, 20, (20,), (32, 32), I8, input_dynamic=True, input_granularity=PerTensor()),
    "dynamic_group": SegLinearSpec(64, 20, (20,), (64,), I8, input_dynamic=True, input_granularity=PerGroup(32)),
    "no_bias": SegLinearSpec(64, 20, (20,), (64,), I8, has_bias=False),
    "int4_weights": SegLinearSpec(64, 20, (20,), (64,), I8, weight_dtype=DType.INT4),
    "int4_group32_dynamic": SegLinearSpec(64, 20, (20,), (64,), I8, weight_dtype=DType.INT4, weight_scale_columns=2,
                                          input_dynamic=True, input_granularity=PerToken()),
    "int4_lowrank": SegLinearSpec(64, 20, (20,), (64,), I8, weight_dtype=DType.INT4, weight_scale_columns=2,
                                  smooth=True, low_rank=4),
    "w4a16_group32": SegLinearSpec(64, 20, (20,), (64,), None, weight_dtype=DType.INT4, weight_scale_columns=2),
    "w4a16_segments": SegLinearSpec(64, 20, (20,), (32, 32), None, weight_dtype=DType.INT4, weight_scale_columns=4,
                                    low_rank=3),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("name", list(SPECS))
def test_twin_matches_emulated_seglinear(name):
    module = pack(filled(SPECS[name]))
    x = torch.randn(3, 7, SPECS[name].in_features) * 2
    y = seglinear_forward(module, layout_of(module), x, scaled_gemm_reference)
    assert y.shape == (3, 7, SPECS[name].out_features) and y.dtype == x.dtype
    assert rel_err(y, module(x)) <= 1e-3


@pytest.mark.parametrize("name", ["dynamic", "dynamic_dual", "dynamic_group", "dynamic_segments_smooth",
                                  "int4_group32_dynamic"])
def test_dynamic_twin_is_bitwise_emulated(name):
    """Dynamic codes are computed with the emulated divisions: identical up to matmul rounding."""
    module = pack(filled(SPECS[name]))
    x = torch.randn(5, SPECS[name].in_features)
    y = seglinear_forward(module, layout_of(module), x, scaled_gemm_reference)
    torch.testing.assert_close(y, module(x), rtol=1e-5, atol=1e-4)


CAT_SPLIT = SegLinearSpec(2560, 48, (48,), (1024, 1536), I8, input_dynamic=True, input_granularity=PerToken(),
                          weight_scale_columns=2)  # a FLUX-like cat of two long segments: one plain GEMM each
INTEGER_SPECS = dict(SPECS, cat_split=CAT_SPLIT, cat_split_static=replace(CAT_SPLIT, input_dynamic=False,
                                                                            input_granularity=PerTensor()),
                     long_k=SegLinearSpec(2304, 48, (48,), (2304,), I8),
                     long_k_heads=SegLinearSpec(2304, 48, (48,), (128,) * 18, I8, weight_scale_columns=18),
                     dynamic_dual_segments_smooth=SegLinearSpec(64, 64, (32, 32), (32, 32), I8, input_dynamic=True,
                                                                input_granularity=PerToken(), smooth=True,
                                                                dual_scale=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", [n for n, s in INTEGER_SPECS.items()
                                  if integer_exact(filled(s).canonical_buffers(), s) and not s.low_rank])
def test_integer_twin_is_the_emulated_layer_bitwise(name, dtype):
    """INT8 x INT8: the GPU's data flow on the twin and the emulated layer compute the same codes, exact sums and
    float32 epilogue, so they agree to the bit (static and dynamic, DualScale, input and output segments, K above
    the exact float32 depth)."""
    module = pack(filled(INTEGER_SPECS[name]))
    x = (torch.randn(3, 7, INTEGER_SPECS[name].in_features) * 2).to(dtype)
    assert torch.equal(seglinear_forward(module, layout_of(module), x, scaled_gemm_reference), module(x))


def test_long_constant_scale_blocks_run_as_one_plain_gemm_each():
    """FLUX's ``cat`` (two long input segments with their own scales): one scale-mode-0 GEMM per block on K-slices
    read in place (views of the codes and the weight), the float32 partials added in order, then the bias."""
    module = pack(filled(CAT_SPLIT))
    layout = layout_of(module)
    assert layout.split_blocks and layout.blocks == (0, 1024)
    calls = []

    def recording_gemm(*args):
        a, b, *_ = args
        calls.append((a.shape[2], args[11], a._base is not None and b._base is not None))
        return scaled_gemm_reference(*args)

    x = torch.randn(5, CAT_SPLIT.in_features)
    assert torch.equal(seglinear_forward(module, layout, x, recording_gemm), module(x))
    assert calls == [(1024, 0, True), (1536, 0, True)]


def test_split_blocks_only_where_few_long_integer_blocks():
    flux_cat = SegLinearSpec(15360, 64, (64,), (3072, 12288), I8, input_dynamic=True, input_granularity=PerToken(),
                             weight_scale_columns=2)
    assert layout_of(filled(flux_cat)).split_blocks
    assert not layout_of(filled(replace(flux_cat, dual_scale=True))).split_blocks  # DualScale: per K tile
    assert not layout_of(filled(replace(flux_cat, input_dtype=F8, weight_dtype=F8))).split_blocks  # FP8: cuBLASLt
    assert not layout_of(filled(SPECS["heads"])).split_blocks  # 32-wide heads: per K tile
    heads = SegLinearSpec(3072, 64, (64,), (128,) * 24, I8, input_dynamic=True, input_granularity=PerToken())
    assert not layout_of(filled(heads)).split_blocks  # 24 blocks of 128: per K tile
    assert not layout_of(filled(SegLinearSpec(640, 32, (32,), (128, 512), I8, weight_scale_columns=2))).split_blocks


def test_integer_products_are_exact_where_a_float32_sum_is_not():
    g = torch.Generator().manual_seed(0)
    k = 3 * EXACT_DEPTH + 5
    a = torch.full((4, k), 127, dtype=torch.int8)  # sums near 127² · k ≈ 5e7 > 2²⁴: float32 drops the last bits
    b = torch.randint(100, 128, (6, k), generator=g, dtype=torch.int8)
    exact = (a.long() @ b.long().T).double().float()  # the int32 accumulator, rounded once to float32
    assert torch.equal(integer_products(a, b), exact)
    assert not torch.equal(a.float() @ b.float().T, exact)


def test_rescaled_tiles_are_as_wide_as_the_alignment_allows():
    assert scale_tile_k(3072, 15360) == 128  # FLUX's cat layer: 128, never 256
    assert scale_tile_k(128, 3072) == 128 and scale_tile_k(64, 4096) == 64 and scale_tile_k(32, 128) == 32
    assert scale_tile_k(128, 40) == 64  # no wider than K needs
    assert scale_tile_k(8, 64) == 8  # below any kernel tile (the GPU refuses it): the alignment's power of 2


def test_layout_scales_per_tile_only_where_the_scale_varies_along_k():
    assert layout_of(filled(SPECS["plain"])).scale_mode == 0
    assert layout_of(filled(SPECS["dual"])).scale_mode == 0
    heads = filled(SPECS["heads"])
    assert layout_of(heads).scale_mode == 2 and layout_of(heads).k_align == 32
    heads.weight_scale.copy_(heads.weight_scale[:, :1].expand(-1, 4))  # replicated per-channel scales
    assert layout_of(heads).scale_mode == 1 and not pack_tensors(heads)["gpu_w_col"].any()
    assert layout_of(filled(SPECS["cat_unequal"])).k_align == 32
    adaln = layout_of(filled(SPECS["adaln"]))
    assert adaln.per_segment_input and adaln.out_segment == 16
    assert not layout_of(filled(SPECS["out_segments_nosmooth"])).per_segment_input
    folded = layout_of(filled(SPECS["folded_fp8_out_segments"]))  # segment scales in the smoothing: one per output
    assert folded.scale_mode == 0 and folded.per_segment_input and folded.out_segment == 32


def test_static_multiplier_folds_smoothing_and_segment_scales():
    module = filled(SegLinearSpec(64, 8, (4, 4), (32, 32), I8, smooth=True))
    packed = pack_tensors(module)
    expected = 1.0 / (module.smooth * module.input_scale.repeat_interleave(32, dim=1))
    torch.testing.assert_close(packed["gpu_in_mul"], expected)
    assert packed["gpu_a_scale"].shape == (2, 1, 2)


@pytest.mark.parametrize("name", ["int4_lowrank", "int4_group32_dynamic", "heads_int4"])
def test_two_level_int4_runs_as_an_int8_gemm_from_enough_rows(name):
    """Two-level group scales (``base · step``): from DEQUANTIZE_MIN_M rows the GEMM takes the exact INT8
    weight ``code · step`` and the per-row base, below them the group scales formed per call; both match
    the emulated layer."""
    spec = dict(SPECS, heads_int4=SegLinearSpec(128, 24, (24,), (32,) * 4, I8, weight_dtype=DType.INT4,
                                                 weight_scale_columns=4))[name]
    module = filled(replace(spec, weight_two_level=True))
    assert module.weight_scale.shape == (spec.out_features, 1) and module.weight_steps.dtype == torch.uint8
    calls = []

    def recording_gemm(*args):
        calls.append((args[1].dtype, tuple(args[4].shape)))
        return scaled_gemm_reference(*args)

    packed = pack(module)
    for rows in (7, 130):
        x = torch.randn(rows, spec.in_features) * 2
        y = seglinear_forward(packed, layout_of(packed), x, recording_gemm)
        assert rel_err(y, module(x)) <= 1e-5  # the same exact products as the emulated layer, other order
    groups = spec.weight_scale_columns  # packed INT4 with group scales below the threshold, INT8 from it
    assert calls == [(torch.uint8, (spec.out_features, groups)), (torch.int8, (spec.out_features, 1))]


def test_free_group_scales_are_not_taken_for_two_level():
    assert "gpu_zero_col" not in pack_tensors(filled(SPECS["int4_lowrank"]))
