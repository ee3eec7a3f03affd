"""Packed INT4 weight storage: layout, round trip, and SegLinear's buffer."""

import pytest
import torch

from segquant.enums import DType
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import pack_int4, stored_codes, unpack_int4


def test_layout_is_two_codes_per_byte_low_nibble_first():
    packed = pack_int4(torch.tensor([[1, -1, 7, -8, 3]], dtype=torch.int8))
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [[0xF1, 0x87, 0x03]]  # odd K: the last high nibble is 0


@pytest.mark.parametrize("k", [1, 2, 15, 64])
def test_round_trip_every_code(k):
    codes = torch.randint(-8, 8, (7, k), generator=torch.Generator().manual_seed(k)).to(torch.int8)
    packed = pack_int4(codes)
    assert packed.shape == (7, (k + 1) // 2)
    assert torch.equal(unpack_int4(packed, k), codes)


def test_unpack_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="expected uint8"):
        unpack_int4(torch.zeros(3, 4, dtype=torch.uint8), 10)


def test_seglinear_holds_int4_weights_packed_and_dequantizes_them():
    spec = SegLinearSpec(in_features=9, out_features=4, output_segments=(4,), input_segments=(9,),
                         weight_dtype=DType.INT4, input_dtype=None)
    module = SegLinear(spec)
    assert module.weight_codes.shape == (4, 5) and module.weight_codes.dtype == torch.uint8
    codes = torch.randint(-8, 8, (4, 9), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    module.weight_codes.copy_(stored_codes(codes, DType.INT4))
    module.weight_scale.fill_(0.5)
    assert torch.equal(module.dequantized_weight(), codes.float() * 0.5)
    assert torch.equal(stored_codes(codes, DType.INT8), codes)
