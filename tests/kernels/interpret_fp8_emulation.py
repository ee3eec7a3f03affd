"""Run the Triton kernel of the tensor-core FP8 model in Triton's CPU interpreter against the pure-torch loop (a
subprocess of ``test_triton_interpreted.py``: ``TRITON_INTERPRET=1`` must be set before Triton is imported).
Prints one ``name equal`` line per case (``equal``: bitwise, what the kernel must be)."""

import torch

from segquant.kernels.fp8_accumulation import Accumulation, tensor_core_sum
from segquant.kernels.gpu.triton_fp8_emulation import tensor_core_sum_triton

#: name -> (M, N, K, model, codes over the whole E4M3 range)
CASES = {
    "hopper_odd_sizes": (19, 23, 200, Accumulation(), False),
    "fast_accumulation": (16, 16, 160, Accumulation(promote_every=None), False),
    "group8_f12_promote32": (17, 9, 70, Accumulation(8, 12, 32), False),
    "group32_f14_promote64_wide": (16, 33, 256, Accumulation(32, 14, 64), True),
    "hopper_wide_codes": (21, 18, 96, Accumulation(), True),
}


def codes(rows: int, k: int, wide: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if wide:  # every finite E4M3 value alike: subnormals and the largest exponents
        bits = torch.randint(0, 256, (rows, k), generator=g, dtype=torch.int32)
        return torch.where((bits & 0x7F) == 0x7F, bits - 1, bits).to(torch.uint8).view(torch.float8_e4m3fn)
    return (torch.randn(rows, k, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)


if __name__ == "__main__":
    for name, (m, n, k, model, wide) in CASES.items():
        a, b = codes(m, k, wide, 0), codes(n, k, wide, 1)
        triton_sum = tensor_core_sum_triton(a, b, model.group, model.fraction_bits, model.promote_every)
        print(name, torch.equal(triton_sum, tensor_core_sum(a, b, model)), flush=True)
