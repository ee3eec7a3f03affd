"""Where a persistent 8-bit GEMM's time goes at FLUX.1-dev shapes: the schedule of the Gluon INT8 kernel
(:mod:`segquant.kernels.gpu.gluon_wgmma`: one program per SM, grouped tile order, a ring of TMA-loaded K tiles, one
MMA in flight) run with parts of it switched off, beside bf16 ``torch.mm`` and the library's own kernels in the same
process.

The first row of each layer and format times, on the same shape: bf16 ``F.linear``, the library's GEMM as routed, the
persistent TMA kernel alone, and the library's GEMM as two calls (the rows whose 128 x 256 tiles fill whole waves,
then the rest, tiled for themselves: ``gemm_rows_split_us``). Then a row per config, with its modes (BM x BN x BK,
ring slots), each replayed from a CUDA graph:
- ``loads``: only the TMA loads of every A and B tile of every K step, in the GEMM's order, through the ring (each
  slot refilled as soon as its load has landed): how fast L2 (and HBM behind it) feed the SMs these tiles.
- ``mmas``: only the MMAs: every slot loaded once, then every K step's MMA reads its slot again: the tensor cores'
  own time for the schedule, padding included.
- ``mmas_stores``: the MMAs and each tile's bf16 store (no scales).
- ``loads_mmas``: the loads and the MMAs, without the stores.
- ``all``: loads, MMAs and stores (the Gluon GEMM without its scales and bias); ``all_whole_waves`` the same on the
  first rows that fill whole waves of the grid: the difference is the last, partial wave's cost.

Without ``stores`` the tile is still "stored" under a mask that is false at run time, so the compiler keeps the MMAs
(``tests/kernels/test_hopper_lowering.py`` checks the MMAs in the SASS of each mode). FP8 accumulates in the tensor
cores' own precision (Gluon's default on sm_90, cuBLASLt's "fast accumulation"), so its ``all`` is a lower bound of
the FP8 GEMMs that promote their sums. ``all_rel_err``: the ``all`` output against the exact product (bf16 rounding,
and for FP8 the tensor cores' accumulation), which checks that the schedule computes the GEMM.
``loads`` alone against the real GEMM says whether the tile loads bind (BENCHMARKS.md, "Output tiles stored by TMA,
deeper Gluon rings", counts 11.6 TB/s of L2 reads for a 128 x 256 x 128 tile at the tensor cores' peak).

    python benchmarks/gemm_ceiling.py --out OUT [--layers out_proj_plain,proj_out_plain] [--formats int8,fp8]
    python benchmarks/gemm_ceiling.py --build   # every mode compiled for sm_90 on any machine: registers, spills

Writes ``ceiling.jsonl`` (a row per layer, format and config) and ``ceiling.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from gemm_w8a8 import DEVICE, LAYERS, PEAK_8BIT, _gemm, bench, layer_inputs, pinned, rotation
from segquant.kernels.gpu.gluon_wgmma import (_INSTR_K, _INSTR_N, _finish, _load_step, _offsets, _ring,
                                              _tile_position)
from segquant.kernels.gpu.plan import quantize_input
from segquant.kernels.gpu.triton_tma import persistent_programs

#: name: (LOADS, MMAS, STORES)
MODES = {"loads": (True, False, False), "mmas": (False, True, False), "mmas_stores": (False, True, True),
         "loads_mmas": (True, True, False), "all": (True, True, True)}
#: (BM, BN, BK, ring slots): the persistent kernels' 128 x 256 tiles at both ring depths, and 128 x 128 (a third
#: more bytes loaded per MMA: if ``loads`` binds, its time grows with the bytes)
CONFIGS = [(128, 256, 128, 3), (128, 256, 128, 4), (256, 128, 128, 4), (128, 128, 128, 4)]
#: format: its element type in Gluon and in a descriptor's signature
CODES = {"int8": (gl.int8, "i8"), "fp8": (gl.float8e4nv, "fp8e4nv")}


@gluon.jit(do_not_specialize=["store_rows"])  # a store_rows of 0 stays unknown to the compiler: the MMAs are kept
def _schedule_kernel(a_desc, b_desc, c_ptr, M, N, K, store_rows, stride_cm, NUM_SMS: gl.constexpr,
                     IS_INT: gl.constexpr, LOADS: gl.constexpr, MMAS: gl.constexpr, BM: gl.constexpr,
                     BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                     WARPS_N: gl.constexpr):
    """The Gluon GEMM's loop over this program's output tiles and their K steps, its loads (``LOADS``) and MMAs
    (``MMAS``) switched on or off; each tile's raw sum stored in bf16 for rows below ``store_rows`` (0: none)."""
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps() // WARPS_N, WARPS_N],
                                                     instr_shape=[16, _INSTR_N, _INSTR_K])
    a_bufs, b_bufs, bars = _ring(a_desc, b_desc, STAGES)
    num_m, num_n, k_tiles = gl.cdiv(M, BM), gl.cdiv(N, BN), gl.cdiv(K, BK)
    tiles = gl.cdiv(num_m * num_n - gl.program_id(0), NUM_SMS)
    total = tiles * k_tiles
    if LOADS:  # the GEMM's prologue: STAGES - 1 steps ahead
        for step in gl.static_range(STAGES - 1):
            _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS, STAGES,
                       GROUP_M)
    else:  # every slot loaded once, for the MMAs to read again and again
        for step in gl.static_range(STAGES):
            _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, STAGES, NUM_SMS, STAGES,
                       GROUP_M)
            mbarrier.wait(bars.index(step), 0)
    step = 0
    for t in range(tiles):
        if IS_INT:
            acc = gl.zeros((BM, BN), gl.int32, layout)
        else:
            acc = gl.zeros((BM, BN), gl.float32, layout)
        for _ in range(k_tiles):
            slot = step % STAGES
            if LOADS:
                mbarrier.wait(bars.index(slot), (step // STAGES) & 1)
            if MMAS:
                acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            if LOADS:  # into the previous step's slot, whose MMA (if any) is done
                _load_step(step + STAGES - 1, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total,
                           NUM_SMS, STAGES, GROUP_M)
            step += 1
        if MMAS:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        pid_m, pid_n = _tile_position(gl.program_id(0) + t * NUM_SMS, num_m, num_n, GROUP_M)
        offs_m, offs_n = _offsets(pid_m, BM, layout, 0), _offsets(pid_n, BN, layout, 1)
        _finish(acc.to(gl.float32), offs_m, offs_n, gl.minimum(M, store_rows), N, c_ptr, stride_cm, c_ptr, False)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))


def descriptor(t: torch.Tensor, rows: int, bk: int, fmt: str) -> TensorDescriptor:
    """TMA descriptor of ``t`` ``(rows_total, K)`` with ``(rows, bk)`` blocks in wgmma's shared-memory layout."""
    block = [rows, bk]
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, CODES[fmt][0]))


def schedule_call(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, fmt: str, config: tuple, mode: str):
    """A no-argument launch of the schedule: ``a`` ``(M, K)`` codes, ``b`` ``(N, K)`` weights, ``out`` ``(M, N)``
    bf16."""
    bm, bn, bk, stages = config
    loads, mmas, stores = MODES[mode]
    m, k, n = a.shape[0], a.shape[1], b.shape[0]
    sms = persistent_programs(a)
    a_desc, b_desc = descriptor(a, bm, bk, fmt), descriptor(b, bn, bk, fmt)
    grid = (min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)

    def call():
        _schedule_kernel[grid](a_desc, b_desc, out, m, n, k, m if stores else 0, out.stride(0), NUM_SMS=sms,
                               IS_INT=fmt == "int8", LOADS=loads, MMAS=mmas, BM=bm, BN=bn, BK=bk, STAGES=stages,
                               GROUP_M=8, WARPS_N=2 if bn > bm else 1, num_warps=8)

    return call


def random_codes(rows: int, k: int, fmt: str) -> torch.Tensor:
    """Random 8-bit codes ``(rows, k)`` on the GPU (INT8 in [-127, 127]; E4M3 from a unit normal)."""
    if fmt == "int8":
        return torch.randint(-127, 128, (rows, k), device=DEVICE["name"], dtype=torch.int8)
    return torch.randn(rows, k, device=DEVICE["name"]).to(torch.float8_e4m3fn)


def whole_wave_rows(m: int, n: int, bm: int, bn: int, programs: int) -> int | None:
    """The rows whose ``bm x bn`` tiles fill whole waves of ``programs`` (None where the whole waves do not end at
    a row of tiles, or there is no partial wave)."""
    num_n = triton.cdiv(n, bn)
    tiles = triton.cdiv(m, bm) * num_n
    whole = tiles - tiles % programs
    return whole // num_n * bm if 0 < whole < tiles and whole % num_n == 0 else None


def rows_of(quantized: tuple, start: int, stop: int) -> tuple:
    """Rows ``start:stop`` of the op's input (codes ``(1, M, K)``, scales ``(1, M|1, J)``, negative scales)."""
    codes, a_scale, a_scale_neg = quantized

    def cut(t):
        return t if t is None or t.shape[1] != codes.shape[1] else t[:, start:stop]

    return cut(codes), cut(a_scale), cut(a_scale_neg)


def measure(layer: str, fmt: str) -> list[dict]:
    """Rows for one layer and format: bf16 ``torch.mm``, the library's GEMM (as routed, the persistent TMA kernel
    alone, and as routed in two calls: the rows whose 128 x 256 tiles fill whole waves, then the rest, whose own
    tiles may be smaller: ``gemm_rows_split_us``, outputs not joined), then every config's modes
    (:func:`measure_config`)."""
    m, k, n = LAYERS[layer][:3]
    copies = rotation(m, k, n)
    mods, xs, ws = layer_inputs(layer, fmt, copies)
    base = dict(layer=layer, fmt=fmt, M=m, K=k, N=n, copies=copies,
                bf16_mm_us=bench([lambda x=x, w=w, mod=mod: F.linear(x, w, mod.bias)
                                  for x, w, mod in zip(xs, ws, mods)], graph=True))
    quantized = [quantize_input(mod, x) for mod, x in zip(mods, xs)]
    calls = [lambda mod=mod, q=q: _gemm(mod, q) for mod, q in zip(mods, quantized)]
    base["gemm_routed_us"] = bench(calls, graph=True)
    with pinned("tma"):
        base["gemm_tma_us"] = bench(calls, graph=True)
    split = whole_wave_rows(m, n, 128, 256, persistent_programs(xs[0]))
    if split:
        base["gemm_rows_split_us"] = bench([lambda mod=mod, q=q: (_gemm(mod, rows_of(q, 0, split)),
                                                                  _gemm(mod, rows_of(q, split, m)))
                                            for mod, q in zip(mods, quantized)], graph=True)
    rows = [base]
    codes = [random_codes(m, k, fmt) for _ in range(copies)]
    weights = [random_codes(n, k, fmt) for _ in range(copies)]
    out = torch.empty(m, n, device=DEVICE["name"], dtype=torch.bfloat16)
    for config in CONFIGS:
        rows.append(measure_config(layer, fmt, config, codes, weights, out))
    return rows


def measure_config(layer: str, fmt: str, config: tuple, codes: list, weights: list, out: torch.Tensor) -> dict:
    """One config's modes (µs) on the rotated ``codes`` ``(M, K)`` / ``weights`` ``(N, K)``, the bytes it loads, the
    L2 read rate of ``loads``, the MMAs' fraction of the peak, the check of ``all`` against the exact product, and
    ``all`` again on the first rows that fill whole waves of the grid (``all_whole_waves_us``; the difference is what
    the last, partial wave costs), where the whole waves end at a row of tiles."""
    bm, bn, bk, _ = config
    (m, k), n = codes[0].shape, weights[0].shape[0]
    tiles, k_tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn), triton.cdiv(k, bk)
    row = dict(layer=layer, fmt=fmt, config="x".join(map(str, config)), tiles=tiles,
               loaded_mb=tiles * k_tiles * (bm + bn) * bk / 1e6)
    for mode in MODES:
        row[f"{mode}_us"] = bench([schedule_call(a, b, out, fmt, config, mode) for a, b in zip(codes, weights)],
                                  graph=True)
    schedule_call(codes[0], weights[0], out, fmt, config, "all")()  # the instrument computes the product
    exact = codes[0].float().double() @ weights[0].float().double().t()
    row["all_rel_err"] = ((out.double() - exact).norm() / exact.norm()).item()
    row["l2_read_tbps"] = row["loaded_mb"] / row["loads_us"]  # MB / µs
    row["mma_frac_of_peak"] = 2.0 * tiles * bm * bn * k_tiles * bk / row["mmas_us"] / 1e6 / PEAK_8BIT
    whole_rows = whole_wave_rows(m, n, bm, bn, persistent_programs(codes[0]))
    if whole_rows:
        row["all_whole_waves_us"] = bench([schedule_call(a[:whole_rows], b, out[:whole_rows], fmt, config, "all")
                                           for a, b in zip(codes, weights)], graph=True)
    return row


def build_report() -> str:
    """Every mode of every config compiled for sm_90 (no GPU needed): shared memory, registers, spills."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sm90_builds import described
    from tests.kernels.test_hopper_lowering import gluon_build

    lines = [f"Triton {triton.__version__}, sm_90"]
    for fmt in CODES:
        for bm, bn, bk, stages in CONFIGS:
            config = triton.Config({"BM": bm, "BN": bn, "BK": bk, "STAGES": stages, "GROUP_M": 8,
                                    "WARPS_N": 2 if bn > bm else 1}, num_warps=8, num_stages=1)
            for mode, (loads, mmas, _) in MODES.items():
                kernel = gluon_build(_schedule_kernel, config, code=CODES[fmt][1], IS_INT=fmt == "int8", LOADS=loads,
                                     MMAS=mmas)
                lines.append(f"{fmt} {bm}x{bn}x{bk} x{stages} {mode}: {described(kernel)}")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    columns = ["layer", "fmt", "config", "bf16_mm_us", "gemm_routed_us", "gemm_tma_us", "gemm_rows_split_us",
               "loaded_mb", *(f"{mode}_us" for mode in MODES), "all_whole_waves_us", "l2_read_tbps",
               "mma_frac_of_peak", "all_rel_err"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                                        for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--layers", default="out_proj_plain,proj_out_plain")
    parser.add_argument("--formats", default="int8,fp8")
    parser.add_argument("--build", action="store_true", help="compile every mode for sm_90 and report; no GPU")
    args = parser.parse_args()
    if args.build:
        print(build_report())
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows, started = [], time.time()
    for layer in args.layers.split(","):
        for fmt in args.formats.split(","):
            for row in measure(layer, fmt):
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(args.out / "ceiling.jsonl", "a") as log:
                    log.write(json.dumps(row) + "\n")
    header = (f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
              f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s")
    (args.out / "ceiling.md").write_text(header + "\n\n" + table(rows) + "\n")
    print(header)
    print(table(rows))


if __name__ == "__main__":
    main()
