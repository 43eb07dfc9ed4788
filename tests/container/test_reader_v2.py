"""What version 2 of the .dzip format adds, written and read: dense records, K, the trailer.

A codebook record with b = 0 is dense: every element kept, E = K = element count, no gap
table and no gap stream; its code stream never holds the filler symbol k. Every codebook
record states K, its kept weights (E minus the fillers), which must agree with the gap
stream. The header body follows the sections and an 8-byte trailer (u32 body size H, u32
crc32 of preamble + body) ends the file; the preamble's last u32 is reserved (0). Its
counts and sizes (record count, section sizes, E, K, C, G) are unsigned LEB128 varints:
minimal, at most 10 bytes, below 2**64. Version 3 keeps all of this (its own additions are
in test_reader_v3.py): the dense-record tests run on both versions where the Huffman
coding is not the point, on version 2 (`layout.encode(model, 2)`, Huffman only) where it is.
Checks that every version shares are in test_rejections.py.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from layout import (
    WEIGHT,
    assert_rejected,
    bits_equal,
    build_layout,
    crafted,
    encode,
    header_body,
    parse_layout,
    seal,
    section_parts,
    small_bytes,
    varint,
)

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.container import header
from deepzip.container.cursor import Cursor
from deepzip.container.spec import pack_varint
from deepzip.errors import ChecksumError, FormatError, TruncatedError
from deepzip.limits import MAX_HEADER_SIZE

GOLDEN_V2 = Path(__file__).parent / "golden" / "v2.dzip"


def dense_record(shape, k, dtype=torch.float32, seed=0) -> CodebookTensor:
    """Every position kept (positions None): the writer stores it dense, b = 0."""
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    codebook = (rng.standard_normal(k) * 10).astype(np.float32)
    codebook[: min(k, 3)] = [-0.0, np.inf, 1e-40][: min(k, 3)]  # bit patterns a conversion could lose
    codes = rng.integers(0, k, numel).astype(np.uint16)
    codes[: min(k, numel)] = rng.permutation(k)[: min(k, numel)]  # every code used when it fits
    return CodebookTensor(tuple(shape), dtype, codebook, None, codes)


def dense_file(shape, k, dtype=torch.float32, version=2) -> bytes:
    """One dense record as a file of `version` (2: Huffman-coded, as the version-2 writer wrote)."""
    return encode(CompressedModel({"d.weight": dense_record(shape, k, dtype)}), version)


# ---------------------------------------------------------------- dense records (b = 0)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 2, 3, 16, 255, 256, 257, 4095, 4096])
def test_dense_round_trip_is_bit_exact(dtype, k, version):
    shape = (3, 2000) if k > 256 else (7, 13)
    record = dense_record(shape, k, dtype, seed=k)
    data = encode(CompressedModel({"d.weight": record}), version)
    # The layout: b = 0, E = K = numel, G = 0, and the section is codebook (4k bytes; in
    # version 3 2k when every entry is a float16), code table (ceil((k+1)/2) bytes for
    # Huffman; TC in version 3) and code stream (C bytes), nothing else.
    (r,) = parse_layout(data)["records"]
    params, numel = r["params"], int(np.prod(shape))
    assert (params["k"], params["b"], params["E"], params["K"], params["G"]) == (k, 0, numel, numel, 0)
    if version == 2:
        assert r["size"] == 4 * k + (k + 2) // 2 + params["C"]
    sizes = dict(section_parts(version, r))
    assert (sizes["scales"], sizes["gap_table"], sizes["gap_stream"]) == (0, 0, 0)
    assert r["size"] == sizes["codebook"] + sizes["code_table"] + params["C"]
    width = "<f2" if version == 3 and params["flags"] & 4 else "<f4"
    assert parse_layout(data)["sections"][0][: sizes["codebook"]] == record.codebook.astype(width).tobytes()
    back = container.from_bytes(data).tensors["d.weight"]
    assert back.positions is None and back.index_bits is None
    assert (back.shape, back.dtype) == (record.shape, dtype)
    assert back.codebook.tobytes() == record.codebook.tobytes()
    assert np.array_equal(back.codes, record.codes)
    codebook = torch.from_numpy(record.codebook).to(dtype)
    expected = codebook[torch.from_numpy(record.codes.astype(np.int64))].reshape(shape)
    assert bits_equal(back.to_dense(), expected)
    assert bits_equal(container.from_bytes(data).state_dict()["d.weight"], expected)


@pytest.mark.parametrize("version", [2, 3])
def test_every_position_kept_is_written_dense_unless_the_width_is_given(version):
    codes = np.array([1, 0, 1, 1, 0, 0], np.uint16)
    every = np.arange(6)
    for positions, index_bits, b in [(None, None, 0), (every, None, 0), (every, 3, 3)]:
        record = CodebookTensor((2, 3), torch.float32, np.array([2.0, -1.0], np.float32), positions, codes, index_bits)
        data = encode(CompressedModel({"w": record}), version)
        assert parse_layout(data)["records"][0]["params"]["b"] == b
        assert container.from_bytes(data).state_dict()["w"].tolist() == [[-1.0, 2.0, -1.0], [-1.0, 2.0, 2.0]]


@pytest.mark.parametrize("version", [2, 3])
def test_dense_record_with_an_alias(version):
    record = dense_record((10, 6), 7)
    data = encode(CompressedModel({"wte.weight": record, "lm_head.weight": record}), version)
    assert [r["enc"] for r in parse_layout(data)["records"]] == [1, 2]  # lm_head stored, wte its alias
    state = container.from_bytes(data).state_dict()
    assert state["wte.weight"] is state["lm_head.weight"]
    assert bits_equal(state["wte.weight"], record.to_dense())


def test_dense_codes_of_the_golden_file_decode_to_its_expected_tensor():
    from safetensors.torch import load_file

    data = GOLDEN_V2.read_bytes()
    dense = [r for r in parse_layout(data)["records"] if r["params"] and r["params"]["b"] == 0]
    assert [r["name"] for r in dense] == [b"dense.weight"]
    expected = load_file(GOLDEN_V2.with_name("v2-expected.safetensors"))["dense.weight"]
    assert bits_equal(container.from_bytes(data).state_dict()["dense.weight"], expected)


# A dense record of k = 1 and 8 elements: codebook [x] | table of 2 symbols, [1, 0] ->
# 0x10 | code stream, eight 1-bit '0' codes -> 0x00. With the table [1, 1] (0x11) the
# filler symbol 1 gets the code '1', so a stream with a 1 bit holds a filler.


@pytest.mark.parametrize("stream", [0x01, 0x80, 0xFF])
def test_dense_stream_holding_the_filler_symbol_is_rejected(stream):
    layout = parse_layout(dense_file((8,), 1))
    assert layout["sections"][0][4:] == bytes([0x10, 0x00])
    layout["sections"][0] = layout["sections"][0][:4] + bytes([0x11, stream])
    assert_rejected(build_layout(layout), "d.weight", "filler")
    layout["sections"][0] = layout["sections"][0][:4] + bytes([0x11, 0x00])  # the same table, no filler
    assert container.from_bytes(build_layout(layout)).state_dict()["d.weight"].tolist() == [-0.0] * 8


def test_dense_stream_of_a_larger_codebook_holding_the_filler_is_rejected():
    # k = 3: alphabet of 4; give the unused filler symbol a code and put it in the stream.
    data = dense_file((4, 4), 3)
    layout = parse_layout(data)
    section = layout["sections"][0]
    lengths = [section[12] >> 4, section[12] & 15, section[13] >> 4, section[13] & 15]
    assert lengths[3] == 0 and sorted(lengths[:3]) == [1, 2, 2]
    # Lengths [2, 2, 2, 2]: codes 00, 01, 10, 11 (= the filler 3); 16 codes = 4 bytes.
    stream = bytes([0b00011011]) + bytes(3)
    layout["sections"][0] = section[:12] + bytes([0x22, 0x22]) + stream
    layout["records"][0]["params"]["C"] = 4
    layout["records"][0]["size"] = 12 + 2 + 4
    assert_rejected(build_layout(layout), "d.weight", "filler")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("E", 63, "dense record keeps every one"),  # fewer entries than elements
        ("K", 63, "dense record keeps every one"),
        ("K", 65, "dense record keeps every one"),
        ("G", 1, "dense record keeps every one"),  # (with one more byte: still no gap stream)
    ],
)
@pytest.mark.parametrize("version", [2, 3])
def test_dense_record_must_keep_every_element_and_have_no_gaps(field, value, words, version):
    layout = parse_layout(dense_file((8, 8), 2, version=version))
    layout["records"][0]["params"][field] = value
    if field == "G":
        layout["sections"][0] += b"\x00"
        layout["records"][0]["size"] += 1
    assert_rejected(build_layout(layout), "d.weight", words)


# ---------------------------------------------------------------- E, numel and the streams


def test_more_entries_than_a_dense_code_stream_has_bits():
    # 64 elements of k = 1: 64 one-bit codes, C = 8. Declaring 65 elements (E = K = 65)
    # needs 65 bits: refused from the header, behind valid crcs.
    layout = parse_layout(dense_file((64,), 1))
    assert layout["records"][0]["params"]["C"] == 8
    layout["records"][0]["dims"] = [65]
    layout["records"][0]["params"].update(E=65, K=65)
    assert_rejected(build_layout(layout), "d.weight", "cannot fit in streams of 8 and 0 bytes")


def test_more_entries_than_the_gap_stream_has_bits():
    # small_model's weight with a 2-byte code stream (room for 16 one-bit codes) and the
    # 1-byte gap stream: E = 9 fits the code stream but not the gap stream (E <= 8 G).
    def edit(records, sections):
        sections[WEIGHT] = sections[WEIGHT][:13] + b"\x00" + sections[WEIGHT][13:]
        records[WEIGHT]["size"] += 1
        records[WEIGHT]["dims"] = [4, 3]
        records[WEIGHT]["params"].update(E=9, C=2)

    assert_rejected(crafted(edit, 2), "fc.weight", "cannot fit in streams of 2 and 1 bytes")


def test_element_count_beyond_what_the_entries_reach():
    # E = 2 entries of 2-bit gaps reach (E + 1) * 2**2 - 1 = 11 elements at most.
    def with_numel(n):
        def edit(records, sections):
            records[WEIGHT]["ndim"], records[WEIGHT]["dims"] = 1, [n]

        return crafted(edit, 2)

    header.parse(with_numel(11))  # the header allows it (the gap stream then does not)
    assert_rejected(with_numel(11), "fc.weight", "code or gap stream")
    for n in (12, 1 << 30):
        with pytest.raises(FormatError, match="2 entries of 2-bit gaps cannot reach") as err:
            header.parse(with_numel(n))
        assert "fc.weight" in str(err.value) and not isinstance(err.value, ChecksumError)


# ---------------------------------------------------------------- K, the kept weights


def test_kept_count_above_the_entry_count_is_rejected():
    def edit(records, sections):
        records[WEIGHT]["params"]["K"] = 3

    assert_rejected(crafted(edit, 2), "fc.weight", "3 kept weights among 2 entries")


@pytest.mark.parametrize("kept", [0, 1])
def test_kept_count_disagreeing_with_the_gap_stream_is_rejected(kept):
    def edit(records, sections):
        records[WEIGHT]["params"]["K"] = kept

    assert_rejected(crafted(edit, 2), "fc.weight", f"gap stream: 2 kept weights, the header says {kept}")


def test_kept_count_must_not_count_the_fillers():
    # 2 kept weights and 4 fillers (E = 6): K = E would count the fillers as weights.
    record = CodebookTensor((20,), torch.float16, np.array([0.25], np.float32), np.array([1, 10]), np.zeros(2, np.uint16), 2)
    layout = parse_layout(container.to_bytes(CompressedModel({"w": record})))
    assert (layout["records"][0]["params"]["E"], layout["records"][0]["params"]["K"]) == (6, 2)
    layout["records"][0]["params"]["K"] = 6
    assert_rejected(build_layout(layout), "w", "2 kept weights, the header says 6")


# ---------------------------------------------------------------- preamble and trailer


@pytest.mark.parametrize("reserved", [1, 155, 0xFFFFFFFF])
def test_reserved_field_must_be_zero(reserved):
    # The crc covers the preamble, and it is valid here: the reserved field itself is refused.
    with pytest.raises(FormatError, match="reserved field") as err:
        container.from_bytes(build_layout(parse_layout(small_bytes(2)), word=reserved))
    assert not isinstance(err.value, ChecksumError)


def with_trailer(data: bytes, body_size: int) -> bytes:
    """`data` with the trailer's H set to `body_size` and a crc32 valid for the bytes it then names."""
    end = len(data) - 8
    start = max(end - body_size, 0)
    crc = zlib.crc32(data[start:end], zlib.crc32(data[:16]))
    return data[:end] + struct.pack("<II", body_size, crc)


def test_trailer_body_size_too_large_or_not_fitting():
    data = small_bytes(2)
    assert struct.unpack_from("<I", data, len(data) - 8)[0] == 56
    room = len(data) - 16 - 8  # the most H can be: the body right after the preamble
    for body_size in ((1 << 32) - 1, 1 << 31, MAX_HEADER_SIZE + 1, room + 1, room + 1000):
        with pytest.raises(TruncatedError, match="does not fit"):
            container.from_bytes(with_trailer(data, body_size))


@pytest.mark.parametrize("delta", [-56, -1, 1, 2, 22])
def test_trailer_body_size_wrong_behind_a_valid_crc(delta):
    # An H that fits but names other bytes than the header body (22: the sections too).
    data = with_trailer(small_bytes(2), 56 + delta)
    with pytest.raises(FormatError) as err:
        container.from_bytes(data)
    assert not isinstance(err.value, ChecksumError), err.value


def test_trailer_damage_is_a_checksum_error():
    data = small_bytes(2)
    for offset in range(len(data) - 4, len(data)):  # the header crc itself
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        with pytest.raises(ChecksumError):
            container.from_bytes(bytes(damaged))


def test_bytes_between_the_sections_and_the_header_are_rejected():
    layout = parse_layout(small_bytes(2))
    data = seal(2, header_body(layout, 2), [*layout["sections"], b"junk"])
    with pytest.raises(FormatError, match="4 trailing bytes after the last section"):
        container.from_bytes(data)


def test_every_proper_prefix_of_a_rich_file_is_rejected():
    # The committed version-2 golden: codebook records of several widths, a dense record,
    # an alias and attached files. No prefix parses, whatever its last 8 bytes say.
    data = GOLDEN_V2.read_bytes()
    container.from_bytes(data)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])


def test_header_follows_the_sections():
    # Sections are written as they come: the first section starts right after the preamble.
    model = CompressedModel({"a": RawTensor(torch.arange(3, dtype=torch.int16)), "b": dense_record((4,), 2)})
    data = container.to_bytes(model)
    assert data[16:22] == struct.pack("<3h", 0, 1, 2)
    layout = parse_layout(data)
    assert data[16 : 16 + sum(r["size"] for r in layout["records"])] == b"".join(layout["sections"])


# ---------------------------------------------------------------- varints


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),  # low group 0 with the high bit, then 1
        (300, "ac02"),  # 300 = 2 * 128 + 44: 0x2C | 0x80, 0x02
        (1 << 32, "8080808010"),  # 2**32 = 16 << 28: four 0x80 groups, then 0x10
        ((1 << 64) - 1, "ffffffffffffffffff01"),  # 64 one bits: nine full groups and a 1
    ],
)
def test_varint_round_trip(value, encoded):
    # pack_varint and the reader's cursor against the bytes from the LEB128 rule.
    data = bytes.fromhex(encoded)
    assert pack_varint(value) == varint(value) == data
    cur = Cursor(memoryview(data + b"\xaa"), 0, len(data) + 1, "test")
    assert cur.varint("value") == value and cur.pos == len(data)


def test_pack_varint_refuses_values_outside_u64():
    for value in (-1, 1 << 64):
        with pytest.raises(ValueError):
            pack_varint(value)


def cursor_of(data: bytes):
    return Cursor(memoryview(data), 0, len(data), "test")


@pytest.mark.parametrize("data", ["8000", "ff00", "808000", "81808000", "ffffffffffffffffff00"])
def test_cursor_refuses_non_minimal_varints(data):
    with pytest.raises(FormatError, match="not a minimal varint"):
        cursor_of(bytes.fromhex(data)).varint("value")


def test_cursor_refuses_long_and_wide_varints():
    with pytest.raises(FormatError, match="more than 10 bytes"):
        cursor_of(bytes([0x80] * 10 + [0x01])).varint("value")
    for last in (0x02, 0x7F):  # the 10th byte's bits above 2**63: the value reaches 2**64
        with pytest.raises(FormatError, match="exceeds 64 bits"):
            cursor_of(bytes([0xFF] * 9 + [last])).varint("value")
    with pytest.raises(TruncatedError):  # a varint the header ends inside
        cursor_of(bytes([0x80, 0x80])).varint("value")


def bias_size_replaced(encoded: bytes) -> bytes:
    """small_model's v2 file with fc.bias's section size varint (0x08) replaced by `encoded`,
    and valid header crc: the record is otherwise as written."""
    layout = parse_layout(small_bytes(2))
    body = header_body(layout, 2)
    at = 1 + 2 + 7 + 2 + 4 + 1  # count, name length, name, dtype and ndim, dims, encoding
    assert body[at] == 0x08
    return seal(2, body[:at] + encoded + body[at + 1 :], layout["sections"])


@pytest.mark.parametrize(
    "encoded, match",
    [
        (bytes([0x88, 0x00]), "not a minimal varint"),  # 8 in two bytes
        (bytes([0x88] + [0x80] * 8 + [0x00]), "not a minimal varint"),  # 8 in ten bytes
        (bytes([0x88] + [0x80] * 9 + [0x00]), "more than 10 bytes"),  # eleven bytes
        (bytes([0x88] + [0x80] * 8 + [0x02]), "exceeds 64 bits"),  # 8 + 2**64
    ],
)
def test_bad_section_size_varint_behind_valid_crcs(encoded, match):
    err = assert_rejected(bias_size_replaced(encoded), "fc.bias", match)
    assert "section size" in str(err)


def test_bad_varints_in_every_v2_field_behind_valid_crcs():
    # Each varint of the small file (count, both section sizes, E, K, C, G), written
    # non-minimal (one extra 0x80 group and a 0x00), is refused as such, crcs valid.
    layout = parse_layout(small_bytes(2))
    body = header_body(layout, 2)
    weight = 1 + 21  # the fc.weight record starts after the count and fc.bias
    at_weight_size = weight + 2 + 9 + 2 + 8 + 1
    params = at_weight_size + 1 + 4 + 3
    fields = {"record count": 0, "section size": 17, "entry count": params, "kept count": params + 1}
    fields |= {"code stream size": params + 2, "gap stream size": params + 3}
    assert [body[i] for i in (0, 17, at_weight_size, *range(params, params + 4))] == [2, 8, 14, 2, 2, 1, 1]
    for at in [*fields.values(), at_weight_size]:
        damaged = body[:at] + bytes([body[at] | 0x80, 0x00]) + body[at + 1 :]
        with pytest.raises(FormatError, match="not a minimal varint") as err:
            container.from_bytes(seal(2, damaged, layout["sections"]))
        assert not isinstance(err.value, ChecksumError)
    for what, at in fields.items():
        damaged = body[:at] + bytes([body[at] | 0x80, 0x00]) + body[at + 1 :]
        with pytest.raises(FormatError, match=what):
            container.from_bytes(seal(2, damaged, layout["sections"]))


def test_multi_byte_varints_round_trip():
    # Sizes of 128 bytes and more take two-byte varints: written and read back, and
    # the layout helpers parse them.
    big = RawTensor(torch.arange(300, dtype=torch.int32).mul(0x01010101 * 7).view(torch.float32))  # 1200 bytes: 0xB0 0x09
    # (bytes that spread over all 256 values in every plane: stored raw in version 5 too)
    data = container.to_bytes(CompressedModel({"big": big, "sparse": dense_record((40, 10), 3)}))
    layout = parse_layout(data)
    assert build_layout(layout) == data
    assert bits_equal(container.from_bytes(data).state_dict()["big"], big.tensor)
    assert layout["records"][0]["enc"] == 0 and varint(1200) in data
