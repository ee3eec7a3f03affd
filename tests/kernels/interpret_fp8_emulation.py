"""Run the Triton kernel of the tensor-core FP8 model in Triton's CPU interpreter against the pure-torch loop (a
subprocess of ``test_triton_interpreted.py``: ``TRITON_INTERPRET=1`` must be set before Triton is imported).
Prints one ``name equal`` line per case (``equal``: bitwise, what the kernel must be)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fp8_accumulation import random_codes  # noqa: E402

from segquant.kernels.fp8_accumulation import HOPPER, HOPPER_FAST, Accumulation, tensor_core_sum  # noqa: E402
from segquant.kernels.gpu.triton_fp8_emulation import tensor_core_sum_triton  # noqa: E402

#: name -> (M, N, K, model, codes: the benchmark's or over the whole E4M3 range, see ``random_codes``)
CASES = {
    "hopper_odd_sizes": (19, 23, 200, Accumulation(), "benchmark"),
    "fast_accumulation": (16, 16, 160, Accumulation(promote_every=None), "benchmark"),
    "group8_f12_promote32": (17, 9, 70, Accumulation(8, 12, 32), "benchmark"),
    "group32_f14_promote64_wide": (16, 33, 256, Accumulation(32, 14, 64), "wide"),
    "magnitude_aligned_wide_codes": (21, 18, 96, Accumulation(), "wide"),
    "product_exponents_truncated_sums_wide": (17, 20, 160, HOPPER, "wide"),
    "product_exponents_fast": (16, 19, 200, HOPPER_FAST, "benchmark"),
    "product_exponents_only": (18, 16, 96, Accumulation(16, 13, 64, product_exponents=True), "wide"),
}


if __name__ == "__main__":
    for name, (m, n, k, model, kind) in CASES.items():
        generator = torch.Generator().manual_seed(0)
        a, b = random_codes(kind, m, k, generator, "cpu"), random_codes(kind, n, k, generator, "cpu")
        triton_sum = tensor_core_sum_triton(a, b, model)
        print(name, torch.equal(triton_sum, tensor_core_sum(a, b, model)), flush=True)
