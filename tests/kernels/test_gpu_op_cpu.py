"""The ops ``segquant::scaled_gemm`` and ``segquant::dequantize_w4`` on CPU: schema / fake implementation, no graph
breaks, the backend's clear error on a machine without CUDA. (File name: ``test_gpu_*`` because it tests the GPU backend's op.)"""

import pytest
import torch

from segquant.enums import DType
from segquant.errors import BackendUnavailableError
from segquant.kernels.gpu.ops import dequantize_w4, scaled_gemm
from segquant.kernels.gpu.plan import seglinear_forward
from segquant.kernels.layout import layout_of
from segquant.nn.spec import SegLinearSpec
from tests.kernels.interpret_triton_gemm import dequantize_case
from tests.kernels.test_gemm_reference import SPECS, filled, pack, rel_err


def _op_args(dual: bool, sa: int = 1):
    m, n, k = 5, 32, 64
    a = torch.randint(-128, 128, (sa, m, 2 * k if dual else k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(sa, m, 2) + 0.1
    neg = torch.rand(sa, m, 2) + 0.1 if dual else None
    col = (torch.arange(k) >= 32).to(torch.int32)
    return (a, b, scale, neg, torch.rand(n, 2), col, col.clone(), torch.randn(n), None, None, n // sa, 2, 32,
            torch.float32)


@pytest.mark.parametrize("dual,sa", [(False, 1), (True, 2)])
def test_op_schema_and_fake_implementation(dual, sa):
    torch.library.opcheck(scaled_gemm, _op_args(dual, sa))


@pytest.mark.parametrize("steps,dtype", [(False, torch.bfloat16), (True, torch.int8)])
def test_dequantize_w4_schema_and_fake_implementation(steps, dtype):
    torch.library.opcheck(dequantize_w4, (*dequantize_case(n=32, k=64, segments=(32, 32), steps=steps), dtype))


@pytest.mark.parametrize("name", ["plain", "heads", "dual", "adaln", "dynamic_dual", "int4_lowrank", "w4a16_group32"])
def test_forward_through_the_op_compiles_without_graph_breaks(name):
    module = pack(filled(SPECS[name]))
    layout = layout_of(module)
    x = torch.randn(4, SPECS[name].in_features)
    eager = seglinear_forward(module, layout, x, scaled_gemm)
    compiled = torch.compile(lambda t: seglinear_forward(module, layout, t, scaled_gemm), backend="aot_eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)
    assert rel_err(eager, module(x)) <= 1e-3


def test_check_names_layer_backend_and_reason():
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(SegLinearSpec(64, 16, (16,), (64,), DType.INT8, input_symmetric=False))
    with pytest.raises(BackendUnavailableError, match="blocks.3.ff") as err:
        GpuBackend().check(module, "blocks.3.ff")
    assert "gpu" in str(err.value) and "asymmetric" in str(err.value) and "emulated" in str(err.value)


def test_check_rejects_mixed_formats_and_misaligned_segments():
    from segquant.kernels.gpu.backend import GpuBackend

    mixed = filled(SegLinearSpec(64, 16, (16,), (64,), DType.FP8E4M3))
    with pytest.raises(BackendUnavailableError, match="int8 x inputs fpe4m3 has no kernel"):
        GpuBackend().check(mixed, "mixed")
    fp8_weight_only = filled(SegLinearSpec(64, 16, (16,), (64,), None, weight_dtype=DType.FP8E4M3))
    with pytest.raises(BackendUnavailableError, match="weight-only fpe4m3 has no kernel"):
        GpuBackend().check(fp8_weight_only, "fp8_weight_only")
    if torch.cuda.is_available():
        odd = filled(SegLinearSpec(48, 16, (16,), (24, 24), DType.INT8))
        with pytest.raises(BackendUnavailableError, match="multiples of 32"):
            GpuBackend().check(odd, "odd")
    else:
        with pytest.raises(BackendUnavailableError, match="CUDA is not available"):
            GpuBackend().check(filled(SPECS["plain"]), "plain")


@pytest.mark.parametrize("name", ["heads", "dual_fp8_segments", "adaln", "dynamic_segments_smooth", "int4_lowrank",
                                  "w4a16_group32", "w4a16_segments"])
def test_backend_pack_and_forward_on_cpu_match_emulated(name):
    """pack() registers non-persistent buffers only; forward (the op's CPU kernel is the twin) matches."""
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(SPECS[name])
    saved = set(module.state_dict())
    GpuBackend().pack(module)
    assert set(module.state_dict()) == saved and module._non_persistent_buffers_set
    x = torch.randn(2, 5, SPECS[name].in_features)
    assert rel_err(GpuBackend().forward(module, x), module(x)) <= 1e-3


def test_int4_weights_reach_the_gemm_packed():
    """No unpacked copy of 4-bit weights: the GEMM reads the uint8 ``(N, K/2)`` buffer itself."""
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(SPECS["int4_lowrank"])
    GpuBackend().pack(module)
    seen = {}

    def spy(a, b, *rest):
        seen["b"] = b
        return scaled_gemm(a, b, *rest)

    seglinear_forward(module, module.gpu_layout, torch.randn(3, 64), spy)
    assert seen["b"] is module.weight_codes and seen["b"].dtype == torch.uint8 and seen["b"].shape == (20, 32)
    assert all(t.dtype != torch.int8 or t.shape != (20, 64) for t in module.buffers())


def test_int4_weights_with_odd_input_width_are_refused_by_name():
    from segquant.kernels.gpu.backend import _layout_problem
    from segquant.kernels.layout import layout_of

    odd = filled(SegLinearSpec(33, 16, (16,), (33,), DType.INT8, weight_dtype=DType.INT4))
    assert "even number of input channels" in _layout_problem(layout_of(odd))
    assert _layout_problem(layout_of(filled(SPECS["int4_lowrank"]))) is None


#: A plain static FP8 layer in cuBLASLt's alignment (64 -> 32, smoothed).
PLAIN_STATIC_FP8 = SegLinearSpec(64, 32, (32,), (64,), DType.FP8E4M3, weight_dtype=DType.FP8E4M3, smooth=True)


def test_plain_static_fp8_layers_pack_folded_column_scales_and_share_unit_rows():
    """``torch._scaled_mm``'s row-wise FP8 GEMM gets ``input_scale · w_scale[n]`` as its column scales and a slice of
    one shared ones-vector as its row scales: no scale tensor is built per call. Only plain static FP8 layers
    (16-aligned, no DualScale, no segmented input) get them."""
    first, second = pack(filled(PLAIN_STATIC_FP8, seed=0)), pack(filled(PLAIN_STATIC_FP8, seed=1))
    expected = first.input_scale[0, 0] * first.weight_scale[:, 0]
    torch.testing.assert_close(first.gpu_fp8_columns, expected.reshape(1, -1), rtol=0, atol=0)
    assert first.gpu_fp8_rows is second.gpu_fp8_rows and bool((first.gpu_fp8_rows == 1).all())
    for name in ("plain_fp8", "dual_fp8_segments", "cat_unequal", "plain"):  # 40 outputs: not 16-aligned
        assert not hasattr(pack(filled(SPECS[name])), "gpu_fp8_columns"), name


def test_static_fp8_layers_with_one_weight_scale_pack_one_scale_for_the_tensor_wise_gemm():
    """Per-tensor FP8 weights: the product has one scale, ``input_scale · w_scale``, packed 0-dim with a 0-dim one as
    the row scale, which is what makes ``torch._scaled_mm`` take its tensor-wise GEMM; a call of any number of rows
    passes them as they are. One differing weight scale keeps the row-wise layout."""
    from segquant.kernels.gpu.plan import _fp8_row_scales

    module = filled(PLAIN_STATIC_FP8)
    module.weight_scale.fill_(0.0123)
    packed = pack(module)
    assert packed.gpu_fp8_columns.shape == () and packed.gpu_fp8_rows.shape == ()
    assert packed.gpu_fp8_columns.item() == (module.input_scale[0, 0] * module.weight_scale[0, 0]).float().item()
    assert packed.gpu_fp8_rows.item() == 1.0 and _fp8_row_scales(packed, 70_000) is packed.gpu_fp8_rows
    module.weight_scale[5, 0] = 0.02
    row_wise = pack(module)
    assert row_wise.gpu_fp8_columns.shape == (1, 32) and _fp8_row_scales(row_wise, 7).shape == (7, 1)


@pytest.mark.parametrize("per_tensor", [True, False], ids=["tensor_wise", "row_wise"])
def test_static_fp8_branch_runs_scaled_mm_with_its_packed_scales(per_tensor, monkeypatch):
    """The plain static FP8 branch of ``seglinear_forward`` on the CPU's ``torch._scaled_mm`` (its CUDA condition
    checked apart below): 0-dim scales for per-tensor weights, ``(M, 1)`` and ``(1, N)`` otherwise, and the emulated
    layer's output within bf16 rounding. A tensor-wise layer takes any number of rows; a row-wise one at most the
    shared ones-vector's ``UNIT_ROWS``."""
    from types import SimpleNamespace

    from segquant.kernels.gpu import ops, plan

    module = filled(PLAIN_STATIC_FP8)
    if per_tensor:
        module.weight_scale.fill_(0.0123)
    pack(module)
    too_many = SimpleNamespace(is_cuda=True, shape=(1, ops.UNIT_ROWS + 1, 64))
    assert plan.static_fp8_fits(module, too_many, torch.bfloat16) == per_tensor
    shapes, launch = [], plan.plain_fp8
    monkeypatch.setattr(plan, "static_fp8_fits", lambda module, codes, dtype: True)
    monkeypatch.setattr(plan, "plain_fp8", lambda a, b, rows, columns, *rest: shapes.append(
        (tuple(rows.shape), tuple(columns.shape))) or launch(a, b, rows, columns, *rest))
    x = (torch.randn(5, 64) * 3).to(torch.bfloat16)
    y = seglinear_forward(module, layout_of(module), x, ops.gemm)
    assert shapes == [((), ()) if per_tensor else ((5, 1), (1, 32))]
    reference = module(x.float())
    assert y.dtype == torch.bfloat16 and rel_err(y, reference) <= 2 ** -8


@pytest.mark.parametrize("rows,weights,scale_mode,expected", [
    (1, torch.int8, 0, True), (2, torch.int8, 0, False), (1, torch.float8_e4m3fn, 0, True),
    (1, torch.int8, 2, False), (4, torch.uint8, 2, True), (5, torch.uint8, 0, False)])
def test_gemv_takes_one_row_of_8bit_weights_and_up_to_four_of_packed_int4(rows, weights, scale_mode, expected):
    from segquant.kernels.gpu.ops import _gemv_fits

    a = torch.zeros(1, rows, 64, dtype=torch.int8)
    b = torch.zeros(32, 32 if weights == torch.uint8 else 64, dtype=weights)
    assert _gemv_fits(a, b, torch.ones(1, 1, 1), scale_mode) is expected
    assert not _gemv_fits(a, b, torch.ones(1, 1, 2), 1)  # the input scale changes along K: the tiled kernel


def test_switched_sets_and_restores_the_routing_switches():
    from segquant.kernels.gpu import ops

    before = (ops.USE_TMA["enabled"], ops.USE_SCALED_MM["enabled"])
    with ops.switched(USE_TMA=not before[0], USE_SCALED_MM=not before[1]):
        assert (ops.USE_TMA["enabled"], ops.USE_SCALED_MM["enabled"]) == (not before[0], not before[1])
    assert (ops.USE_TMA["enabled"], ops.USE_SCALED_MM["enabled"]) == before
    with pytest.raises(ValueError, match="USE_TMAA"):
        with ops.switched(USE_TMAA=True):
            pass


def test_tma_kernel_takes_only_aligned_compute_bound_8bit_layers():
    pytest.importorskip("triton")
    from segquant.kernels.gpu.triton_tma import tma_fits

    a, b = torch.zeros(1, 256, 64, dtype=torch.int8), torch.zeros(32, 64, dtype=torch.int8)
    assert tma_fits(a, b, None, 0, False)
    assert not tma_fits(a[:, :100], b, None, 0, False)  # fewer than TMA_MIN_M rows: the tiled kernel / GEMV
    assert not tma_fits(a, b, torch.ones(1, 1, 1), 0, False)  # DualScale
    assert not tma_fits(a, b, None, 2, True)  # scales that change along K
    assert not tma_fits(a[..., :40], b[:, :40], None, 0, False)  # rows not a multiple of 16 bytes
    assert not tma_fits(torch.zeros(1, 256, 72, dtype=torch.int8)[..., 8:], b, None, 0, False)  # misaligned start
    assert not tma_fits(a, b.to(torch.uint8), None, 0, False)  # packed INT4 weights


def test_kernel_choice_is_timed_once_per_shape_and_keeps_the_fastest(monkeypatch):
    triton_testing = pytest.importorskip("triton.testing")
    from triton.runtime.errors import OutOfResources

    from segquant.kernels.gpu import ops

    timed = []
    monkeypatch.setattr(triton_testing, "do_bench_cudagraph", lambda fn, **_: timed.append(fn) or fn())
    monkeypatch.setattr(ops, "_FASTEST", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert ops.fastest_kernel("fast_tma", {"tiled": lambda: 2.0, "tma": lambda: 1.0}) == "tma"
    assert ops.fastest_kernel("fast_split", {"tiled": lambda: 2.0, "tma": lambda: 3.0,
                                             "tma_split_tail": lambda: 1.5}) == "tma_split_tail"
    assert len(timed) == 5
    assert ops.fastest_kernel("fast_tma", {"tiled": lambda: 1.0, "tma": lambda: 9.0}) == "tma"  # remembered
    assert len(timed) == 5
    assert ops.fastest_kernel("fast_tma", {"tiled": lambda: 1.0}) == "tiled"  # another set of candidates: timed again
    assert len(timed) == 6
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert ops.fastest_kernel("captured", {"tiled": lambda: 2.0, "tma": lambda: 1.0}) == "tiled"  # no timing
    assert not [key for key, _ in ops._FASTEST if key == "captured"]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def out_of_shared_memory():
        raise OutOfResources(278552, 232448, "shared memory")

    assert ops.fastest_kernel("too_big", {"tiled": lambda: 2.0, "tma": out_of_shared_memory}) == "tiled"


def test_integer_kernels_that_differ_from_the_first_are_left_out_with_a_warning(monkeypatch):
    """INT8 candidates must compute the same bits; one that does not (a kernel fault on some GPU or Triton version)
    is named and never chosen, however fast; one without a tile that fits is left out silently."""
    triton_testing = pytest.importorskip("triton.testing")
    from triton.runtime.errors import OutOfResources

    from segquant.kernels.gpu import ops

    monkeypatch.setattr(triton_testing, "do_bench_cudagraph", lambda fn, **_: float(fn()[0]))  # the time: element 0
    monkeypatch.setattr(ops, "_FASTEST", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def too_big():
        raise OutOfResources(278552, 232448, "shared memory")

    kernels = {"tiled": lambda: torch.tensor([3.0, 1.0]), "tma": lambda: torch.tensor([2.0, 1.0]),
               "wgmma": lambda: torch.tensor([1.0, 1.0]), "tma_split_tail": too_big}
    with pytest.warns(RuntimeWarning) as caught:
        assert ops.fastest_kernel("int8", kernels, exact=True) == "tiled"
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["tma", "wgmma"]  # not the one that did not fit
    assert all("differs from the 'tiled' one on shape int8" in str(w.message) for w in caught)
    assert ops.fastest_kernel("fp8", kernels) == "wgmma"  # not exact (FP8): the fastest, whatever its bits
    assert list(ops.agreeing("first_too_big", {"tma_split_tail": too_big, "tma": kernels["tma"]})) == ["tma"]
    assert ops.fastest_kernel("none_fits", {"tiled": too_big, "tma": too_big}, exact=True) == "tiled"  # as unchecked


def test_gluon_kernel_takes_only_int8_on_hopper():
    pytest.importorskip("segquant.kernels.gpu.gluon_wgmma", reason="this Triton has no Gluon for Hopper")
    from segquant.kernels.gpu.gluon_wgmma import wgmma_fits

    a, b = torch.zeros(1, 256, 64, dtype=torch.int8), torch.zeros(32, 64, dtype=torch.int8)
    assert not wgmma_fits(a, b, None, None, 0, False)  # CPU tensors: no sm_90 to run on (the TMA kernel would take it)


def test_small_integers_convert_exactly_through_the_float_mantissa():
    """The per-K-tile INT8 path converts each K tile's int32 sum as ``bits(1.5 · 2²³) + x`` read as a float, minus
    ``1.5 · 2²³`` (no conversion instruction): exact for every ``|x| ≤ 2²²``, which holds the sums of 128 channels of
    INT8 products (``≤ 2²¹``), and wrong just outside."""
    pytest.importorskip("triton")
    from segquant.kernels.gpu.triton_gemm import MAGIC_BITS, MAGIC_FLOAT

    def converted(x: torch.Tensor) -> torch.Tensor:
        return (x + MAGIC_BITS.value).view(torch.float32) - MAGIC_FLOAT.value

    x = torch.arange(-2 ** 22, 2 ** 22 + 1, dtype=torch.int32)
    assert torch.equal(converted(x), x.float())
    assert 128 * 128 ** 2 <= 2 ** 22
    outside = torch.tensor([-2 ** 22 - 1, 2 ** 22 + 1], dtype=torch.int32)
    assert not torch.equal(converted(outside), outside.float())


def test_tail_parts_split_only_a_partial_last_wave():
    pytest.importorskip("triton")
    from segquant.kernels.gpu.triton_tma import tail_parts

    assert tail_parts(432, 132, 24) == 3  # FLUX 3072 -> 3072 at 4608 rows, 128 x 256 tiles: 36 tail tiles
    assert tail_parts(48, 132, 24) == 2  # fewer tiles than SMs: each split in 2
    assert tail_parts(48, 132, 1) == 1  # one K tile cannot be split
    assert tail_parts(264, 132, 24) == 1  # whole waves only
    assert tail_parts(200, 132, 24) == 1  # a last wave more than half full: one piece per idle program is < 2
    assert tail_parts(1728, 132, 24) == 4  # FLUX ff_up: 12 tail tiles, 11 idle programs each, at most √24 pieces
    assert tail_parts(9, 4, 5) == 2  # the interpreter's case: 2 whole waves, 1 tile in 2 pieces


def test_tail_halves_only_where_twice_the_last_wave_fits():
    pytest.importorskip("triton")
    from segquant.kernels.gpu.triton_tma import HALVES_N, tail_parts

    assert tail_parts(432, 132, 24, HALVES_N) == 2  # FLUX 3072 -> 3072: 36 tail tiles in 72 halves
    assert tail_parts(432, 132, 1, HALVES_N) == 2  # each half keeps the whole K: one K tile is enough
    assert tail_parts(200, 132, 24, HALVES_N) == 1  # 68 tail tiles: 136 halves exceed the 132 programs
    assert tail_parts(264, 132, 24, HALVES_N) == 1  # whole waves only
    assert tail_parts(40, 132, 16, HALVES_N) == 2  # fewer tiles than SMs (the GPU test's odd case)


def test_tiled_kernel_row_tiles_follow_the_number_of_rows(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("SEGQUANT_TRITON_AUTOTUNE", raising=False)  # all legal configs, not only the first
    from segquant.kernels.gpu.triton_gemm import CONFIGS, legal_configs

    def row_tiles(m: int) -> set[int]:
        args = {"M": m, "K": 3072, "K_ALIGN": 3072, "OUT_SEG": 2 ** 30, "TILE_SCALE": False, "W4": False, "MODE": 0}
        return {c.kwargs["BM"] for c in legal_configs(CONFIGS, args)}

    assert row_tiles(32) == {16, 64}
    assert row_tiles(512) == {64, 128, 256}  # the text stream: 64-row tiles give more CTAs than 132 SMs want
    assert row_tiles(4096) == {128, 256}
    per_head = {"M": 4096, "K": 3072, "K_ALIGN": 128, "OUT_SEG": 2 ** 30, "TILE_SCALE": True, "W4": False, "MODE": 1}
    rescaled = legal_configs(CONFIGS, per_head)
    assert {c.kwargs["BK"] for c in rescaled} == {128}  # the scale tile: the twin's float32 order
    assert {c.kwargs["BM"] for c in rescaled} == {64, 128, 256}  # 64-row ones too: two programs share an SM


def test_tma_kernel_row_tiles_follow_the_number_of_rows(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("SEGQUANT_TRITON_AUTOTUNE", raising=False)
    from segquant.kernels.gpu.triton_tma import _CONFIGS, sized_configs

    def row_tiles(m: int) -> set[int]:
        return {c.kwargs["BM"] for c in sized_configs(_CONFIGS, {"M": m})}

    assert row_tiles(512) == {64, 128, 256}
    assert row_tiles(4608) == {128, 256}
    split_tiles = {(c.kwargs["BM"], c.kwargs["BN"]) for c in sized_configs(_CONFIGS, {"M": 4608, "N": 3072, "K": 3072,
                                                                               "NUM_SMS": 132, "SPLIT_TAIL": True})}
    assert split_tiles == {(128, 256), (256, 128)}  # 128 x 128 tiles: 864 = 6 waves + 72, a last wave > half full


def test_tma_store_configs_compete_only_with_an_output_descriptor(monkeypatch):
    """The configs with TMA stores need the output's descriptor (rows of 16-byte multiples); the Gluon kernels share the
    pruner and have no such key."""
    pytest.importorskip("triton")
    monkeypatch.delenv("SEGQUANT_TRITON_AUTOTUNE", raising=False)
    from segquant.kernels.gpu.triton_tma import _CONFIGS, sized_configs

    def stores(c_desc) -> set[int]:
        return {c.kwargs["STORE_TMA"] for c in sized_configs(_CONFIGS, {"M": 4608, "c_desc": c_desc})}

    assert stores(None) == {0} and stores(object()) == {0, 1, 2}
    try:
        from segquant.kernels.gpu import gluon_wgmma
    except (ImportError, AttributeError):  # no Gluon for Hopper in this Triton
        return
    assert len(sized_configs(gluon_wgmma._CONFIGS, {"M": 4608})) == len(gluon_wgmma._CONFIGS)


class LaunchRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **options)`` records the call instead of running it."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **options: self.calls.append((args, options))


def test_k_slices_of_a_split_layer_are_read_in_place(monkeypatch):
    """A constant-scale K block of a split layer reaches the tiled and TMA kernels as views of the layer's codes and
    weight: no copy per call (the interpreter checks that the kernels read such views right)."""
    pytest.importorskip("triton")
    from segquant.kernels.gpu import triton_gemm, triton_tma
    from tests.kernels.interpret_triton_gemm import case, k_block

    tiled, tma = LaunchRecorder(), LaunchRecorder()
    monkeypatch.setattr(triton_gemm, "_scaled_gemm_kernel", tiled)
    monkeypatch.setattr(triton_tma, "_tma_gemm_kernel", tma)
    a, b, a_scale, _, w_scale, a_col, w_col, bias, t, u, out_segment, mode, k_align, out_dtype = k_block(
        case(m=130, n=64, k=640, fmt="int8", segments=(128, 512)), 128, 640)
    triton_gemm.scaled_gemm_triton(a, b, a_scale, None, w_scale, a_col, w_col, bias, t, u, out_segment, mode, k_align,
                                   out_dtype)
    triton_tma.tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, t, u, out_dtype)
    (tiled_args, _), (tma_args, _) = tiled.calls[0], tma.calls[0]
    assert tiled_args[0].data_ptr() == a.data_ptr() and tiled_args[1].data_ptr() == b.data_ptr()
    assert tma_args[0].base.data_ptr() == a.data_ptr() and tma_args[1].base.data_ptr() == b.data_ptr()
    assert tma_args[0].strides[0] == 640 and tma_args[1].strides[0] == 640  # the full rows' strides


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_8bit_gemm_launches_turn_fp_fusion_off(fmt, monkeypatch):
    """The tiled and persistent kernels compile INT8 x INT8 and FP8 x FP8 without fused multiply-adds (their epilogue
    then rounds like the twin: INT8 bitwise, ``test_hopper_lowering.py`` checks the PTX; FP8 as far as the twin models
    the tensor cores' sums); the GEMV keeps them for FP8 (its float32 sums are not modelled), explicitly."""
    pytest.importorskip("triton")
    from segquant.kernels.gpu import triton_gemm, triton_gemv, triton_tma
    from tests.kernels.interpret_triton_gemm import case, one_input_scale

    recorders = {}
    for module, kernel in ((triton_gemm, "_scaled_gemm_kernel"), (triton_gemv, "_gemv_kernel"),
                           (triton_tma, "_tma_gemm_kernel")):
        recorders[kernel] = LaunchRecorder()
        monkeypatch.setattr(module, kernel, recorders[kernel])
    a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, t, u, out_segment, mode, k_align, out_dtype = (
        one_input_scale(case(m=130, n=64, k=128, fmt=fmt)))
    triton_gemm.scaled_gemm_triton(a, b, a_scale, None, w_scale, a_col, w_col, bias, t, u, out_segment, mode, k_align,
                                   out_dtype)
    triton_gemv.gemv_triton(a[:, :1], b, a_scale, None, w_scale, w_col, bias, t, u, out_segment, k_align, out_dtype)
    triton_tma.tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, t, u, out_dtype)
    fusion = {kernel: recorder.calls[0][1]["enable_fp_fusion"] for kernel, recorder in recorders.items()}
    assert fusion == {"_scaled_gemm_kernel": False, "_gemv_kernel": fmt != "int8", "_tma_gemm_kernel": False}
