"""Byte planes (deepzip.codec.planes): split by hand, round trips bit for bit, and the choice per plane."""

import numpy as np
import pytest

from deepzip.codec import planes
from deepzip.codec.streams import ANS, HUFFMAN


def test_planes_are_byte_j_of_every_value_little_endian():
    values = np.array([1.5, -2.0], dtype="<f4")  # 0x3FC00000, 0xC0000000
    assert [bytes(p) for p in planes.split(values, 4)] == [b"\x00\x00", b"\x00\x00", b"\xc0\x00", b"\x3f\xc0"]


@pytest.mark.parametrize("coders", [(HUFFMAN,), (ANS,), (HUFFMAN, ANS)])
@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", "<i2"])
def test_round_trip_is_bit_exact(dtype, coders):
    rng = np.random.default_rng(len(dtype) + len(coders))
    values = (rng.normal(0, 0.05, 500) * (1 if dtype[1] == "f" else 3000)).astype(dtype)
    if dtype[1] == "f":
        values[:3] = [np.nan, -0.0, np.inf]  # special values survive as their bits
    coded = planes.encode(values, values.itemsize, coders)
    listed = (planes.LISTED,) if HUFFMAN in coders else ()  # a Huffman plane with a listed table
    assert all(p.coder in (planes.STORED, *coders, *listed) for p in coded)
    back = planes.decode(coded, values.size)
    assert back.tobytes() == values.tobytes()


def test_each_plane_takes_what_is_smaller():
    rng = np.random.default_rng(0)
    biases = rng.uniform(0.01, 0.2, 400).astype("<f4")  # one sign, a narrow range: few top bytes
    coded = planes.encode(biases, 4)
    assert coded[0].coder == planes.STORED  # the low mantissa byte is close to uniform
    assert coded[3].coder != planes.STORED and coded[3].nbytes < 400 // 2
    noise = rng.integers(0, 256, 4000, dtype=np.uint8)
    assert all(p.coder == planes.STORED for p in planes.encode(noise, 4))


def test_a_stored_plane_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="stored plane"):
        planes.decode((planes.CodedStream(planes.STORED, b"", b"\x00" * 3),), 4)


def test_a_listed_table_round_trips_and_is_chosen_where_shorter():
    lengths = np.zeros(256, dtype=np.uint8)
    lengths[[0x3C, 0x3D, 0x3E]] = [1, 2, 2]
    table = planes.pack_listed(lengths)
    assert table == bytes([2, 0x3C, 0x3D, 0x3E, 0x12, 0x20])
    assert planes.unpack_listed(table).tolist() == lengths.tolist()
    biases = np.random.default_rng(1).uniform(0.01, 0.2, 300).astype("<f4")
    top = planes.encode(biases, 4, (HUFFMAN,))[3]
    assert top.coder == planes.LISTED and len(top.table) < 128
