"""Tests of deepzip.container against docs/FORMAT.md: golden bytes, round trips, the writer.

Expected bytes are assembled here from the spec with struct and zlib.crc32. The writer
writes version 3; version-2 and version-1 files (which the reader must keep reading) are
what the earlier writers wrote, rebuilt by `layout.encode(model, 2 or 1)` and checked
against the hand-derived goldens below. Rejections of damaged files are in
test_rejections.py, version-2 specifics in test_reader_v2.py, version-3 ones in
test_reader_v3.py, the decoded-size limit in test_decoded_size.py.
"""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from layout import (
    ENC_PLANES,
    ENC_RAW,
    unplane,
    MAGIC,
    SIGNIFICANCE,
    VERSIONS,
    bits_equal,
    build_layout,
    encode,
    parse_layout,
    seal,
    small_model,
    spec_entries,
)

import deepzip
from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import (
    ChecksumError,
    DeepzipError,
    FormatError,
    TruncatedError,
    VersionError,
)

GOLDEN = Path(__file__).parent / "golden"


# ---------------------------------------------------------------- golden bytes


# fc.bias, raw float32 [1.5, -2.0]: 00 00 C0 3F | 00 00 00 C0
BIAS_SECTION = bytes.fromhex("0000c03f" "000000c0")
# fc.weight, codebook [-1.0, 0.5], entries at 0 (code 1) and 4 (code 0), b = 2:
#   gaps 1 and 4 -> gap symbols [0, 3] (4 <= 2**2, no filler); the end, n = 6, is
#   6 - 4 = 2 <= 2**2 past the last entry, so no trailing filler either: E = 2, K = 2
#   code alphabet k+1 = 3: counts [1,1,0] -> lengths [1,1,0] -> nibbles 1 1 | 0 (pad 0)
#     canonical: sym0 '0', sym1 '1'; symbols [1, 0] -> '10' + pad -> 0x80
#   gap alphabet 4: counts [1,0,0,1] -> lengths [1,0,0,1] -> 0x10 0x01
#     canonical: sym0 '0', sym3 '1'; symbols [0, 3] -> '01' + pad -> 0x40
WEIGHT_SECTION = (
    bytes.fromhex("000080bf" "0000003f")  # -1.0, 0.5 as little-endian float32
    + bytes([0x11, 0x00])
    + bytes([0x10, 0x01])
    + bytes([0x80])
    + bytes([0x40])
)


def expected_small_bytes_v1() -> bytes:
    """The version-1 file of `small_model` (what deepzip 0.1 wrote), derived by hand.

    preamble (u32 = header size) | header: u32 count, records with u32 sizes | u32 crc32
    of preamble + header | sections in record order.
    """
    bias_record = (
        struct.pack("<H", 7) + b"fc.bias"
        + bytes([1, 1]) + struct.pack("<I", 2)  # float32, ndim 1, dims [2]
        + bytes([0]) + struct.pack("<II", 8, zlib.crc32(BIAS_SECTION))
    )  # fmt: skip
    weight_record = (
        struct.pack("<H", 9) + b"fc.weight"
        + bytes([1, 2]) + struct.pack("<II", 2, 3)  # float32, ndim 2, dims [2, 3]
        + bytes([1]) + struct.pack("<II", 14, zlib.crc32(WEIGHT_SECTION))
        + struct.pack("<H", 2) + bytes([2]) + struct.pack("<III", 2, 1, 1)  # k, b, E, C, G
    )  # fmt: skip
    # Records sorted by name: "fc.bias" < "fc.weight".
    body = struct.pack("<I", 2) + bias_record + weight_record
    head = MAGIC + struct.pack("<HHI", 1, 0, len(body)) + body
    data = head + struct.pack("<I", zlib.crc32(head)) + BIAS_SECTION + WEIGHT_SECTION
    assert (len(body), len(data)) == (73, 115)
    return data


def expected_small_bytes_v2() -> bytes:
    """The version-2 file of `small_model`, derived by hand.

    preamble: magic | u16 version 2 | u16 flags 0 | u32 reserved 0          16 bytes
    sections in record order: fc.bias (8), fc.weight (14)                   22 bytes
    header body: varint count 2 | fc.bias record (21) | fc.weight (34)      56 bytes
    trailer: u32 body size 56 | u32 crc32 of preamble then body             8 bytes
    A record: u16 name length, name, u8 dtype, u8 ndim, u32 dims, u8 encoding, varint
    section size, u32 section crc32; a codebook record adds u16 k, u8 b, varints E, K
    (kept weights: E minus the fillers, none here), C, G. Every varint here is < 128,
    so it is the one byte of its value (LEB128: 7 bits a byte, the high bit clear on the
    last): 2 -> 0x02, 8 -> 0x08, 14 -> 0x0E, 1 -> 0x01.
    fc.bias: 2 + 7 + 1 + 1 + 4 + 1 + 1 + 4 = 21; fc.weight: 2 + 9 + 1 + 1 + 8 + 1 + 1 + 4
    + (2 + 1 + 4) = 34; body: 1 + 21 + 34 = 56; file: 16 + 22 + 56 + 8 = 102.
    """
    preamble = MAGIC + bytes([0x02, 0x00]) + bytes([0x00, 0x00]) + bytes(4)
    bias_record = (
        struct.pack("<H", 7) + b"fc.bias"
        + bytes([1, 1]) + struct.pack("<I", 2)  # float32, ndim 1, dims [2]
        + bytes([0]) + bytes([0x08]) + struct.pack("<I", zlib.crc32(BIAS_SECTION))  # raw, 8 bytes
    )  # fmt: skip
    weight_record = (
        struct.pack("<H", 9) + b"fc.weight"
        + bytes([1, 2]) + struct.pack("<II", 2, 3)  # float32, ndim 2, dims [2, 3]
        + bytes([1]) + bytes([0x0E]) + struct.pack("<I", zlib.crc32(WEIGHT_SECTION))  # codebook, 14 bytes
        + struct.pack("<H", 2) + bytes([2]) + bytes([0x02, 0x02, 0x01, 0x01])  # k, b, E, K, C, G
    )  # fmt: skip
    assert (len(bias_record), len(weight_record)) == (21, 34)
    body = bytes([0x02]) + bias_record + weight_record
    trailer = struct.pack("<I", len(body)) + struct.pack("<I", zlib.crc32(preamble + body))
    data = preamble + BIAS_SECTION + WEIGHT_SECTION + body + trailer
    assert (len(body), len(data)) == (56, 102)
    return data


# Version 3 stores the same codebook as float16, since both entries are exactly float16
# (-1.0 = 0xBC00, 0.5 = 0x3800): 4 bytes instead of 8. Tables and streams are unchanged
# (both Huffman: a rANS table alone is as long as either whole Huffman stream here).
WEIGHT_SECTION_V3 = bytes.fromhex("00bc" "0038") + WEIGHT_SECTION[8:]


def expected_small_bytes_v3(version: int = 3) -> bytes:
    """The version-3 file of `small_model`, derived by hand (or, for `version` 4, the same
    file under version 4's number: its gaps are smaller than its significance flags).

    Framed as version 2 (preamble with version 3, sections, header body, trailer). The
    codebook record's parameters are u16 k, u8 b, u8 flags, u8 scale axis, then varints
    E, K, C, G, TC, TG: k = 2, b = 2, flags = 0x04 (codebook entries float16; both
    streams Huffman), scale axis 0 (none), E = K = 2, C = G = 1, TC = ceil(3 / 2) = 2,
    TG = ceil(4 / 2) = 2. fc.weight: 2 + 9 + 1 + 1 + 8 + 1 + 1 + 4 + (2 + 1 + 1 + 1 + 6)
    = 38; body: 1 + 21 + 38 = 60; sections 8 + 10; file: 16 + 18 + 60 + 8 = 102.
    """
    preamble = MAGIC + bytes([version, 0x00]) + bytes([0x00, 0x00]) + bytes(4)
    bias_record = (
        struct.pack("<H", 7) + b"fc.bias"
        + bytes([1, 1]) + struct.pack("<I", 2)
        + bytes([0]) + bytes([0x08]) + struct.pack("<I", zlib.crc32(BIAS_SECTION))
    )  # fmt: skip
    weight_record = (
        struct.pack("<H", 9) + b"fc.weight"
        + bytes([1, 2]) + struct.pack("<II", 2, 3)
        + bytes([1]) + bytes([0x0A]) + struct.pack("<I", zlib.crc32(WEIGHT_SECTION_V3))  # codebook, 10 bytes
        + struct.pack("<H", 2) + bytes([2]) + bytes([0x04, 0x00])  # k, b, flags, scale axis
        + bytes([0x02, 0x02, 0x01, 0x01, 0x02, 0x02])  # E, K, C, G, TC, TG
    )  # fmt: skip
    assert (len(bias_record), len(weight_record)) == (21, 38)
    body = bytes([0x02]) + bias_record + weight_record
    trailer = struct.pack("<I", len(body)) + struct.pack("<I", zlib.crc32(preamble + body))
    data = preamble + BIAS_SECTION + WEIGHT_SECTION_V3 + body + trailer
    assert (len(body), len(data)) == (60, 102)
    return data


def expected_small_bytes_v4() -> bytes:
    """The version-4 file of `small_model`: version 3's, numbered 4."""
    return expected_small_bytes_v3(4)


def expected_small_bytes_v5() -> bytes:
    """The version-5 file of `small_model`: version 3's, numbered 5 (byte planes of two
    biases or two codebook entries cost more than the values: a mode byte a plane)."""
    return expected_small_bytes_v3(5)


def expected_small_bytes_v6() -> bytes:
    """The version-6 file of `small_model`: version 3's, numbered 6 (a compact table of 3 or
    4 symbols is no smaller than their packed 2 bytes: its counts field and length-code
    lengths alone take 16 bits or more)."""
    return expected_small_bytes_v3(6)


EXPECTED_SMALL = {
    1: expected_small_bytes_v1, 2: expected_small_bytes_v2, 3: expected_small_bytes_v3, 4: expected_small_bytes_v4,
    5: expected_small_bytes_v5, 6: expected_small_bytes_v6,
}  # fmt: skip
expected_written = expected_small_bytes_v6  # what this writer writes


def test_golden_bytes_small_model():
    assert container.to_bytes(small_model()) == expected_small_bytes_v6()


def test_version_4_form_of_the_writers_records_is_the_version_4_golden():
    assert encode(small_model(), 4) == expected_small_bytes_v4()


def expected_planes_bytes() -> bytes:
    """A version-5 file by hand: fc.bias = [1.5, -2.0] as byte planes (encoding 5).

    1.5 is 0x3FC00000 and -2.0 is 0xC0000000, little-endian 00 00 C0 3F and 00 00 00 C0,
    so the planes (byte j of each value) are 00 00 | 00 00 | C0 00 | 3F C0. Planes 0-2 are
    stored (mode 0: the 2 bytes, no size fields); plane 3 is Huffman-coded (mode 1,
    T = 128, D = 1): symbols 0x3F and 0xC0 have length 1, which in the 4-bit table of 256
    symbols is the low nibble of byte 31 (symbol 63) and the high nibble of byte 96
    (symbol 192). Canonical codes: 0x3F -> 0, 0xC0 -> 1, so the stream is the bits 0 1,
    padded: 0x40. Section: 6 + 128 + 1 = 135 bytes. Record: 2 + 7 + 1 + 1 + 4 + 1 +
    varint 135 (2 bytes: 87 01) + 4, then the plane fields 00 00 00 01 80 01 01 (T = 128
    is the varint 80 01).
    """
    table = bytearray(128)
    table[31] = 0x01
    table[96] = 0x10
    section = bytes.fromhex("0000" "0000" "c000") + bytes(table) + bytes([0x40])
    assert len(section) == 135
    record = (
        struct.pack("<H", 7) + b"fc.bias"
        + bytes([1, 1]) + struct.pack("<I", 2)  # float32, ndim 1, dims [2]
        + bytes([5]) + bytes([0x87, 0x01]) + struct.pack("<I", zlib.crc32(section))  # byte planes, 135 bytes
        + bytes([0, 0, 0, 1, 0x80, 0x01, 0x01])  # modes 0, 0, 0, then 1 with T = 128, D = 1
    )  # fmt: skip
    preamble = MAGIC + bytes([5, 0, 0, 0]) + bytes(4)
    body = bytes([0x01]) + record
    return preamble + section + body + struct.pack("<I", len(body)) + struct.pack("<I", zlib.crc32(preamble + body))


def test_hand_made_byte_planes_decode_to_their_values():
    model = container.from_bytes(expected_planes_bytes())
    assert bits_equal(model.state_dict()["fc.bias"], torch.tensor([1.5, -2.0]))


def test_byte_planes_are_a_version_5_encoding():
    data = bytearray(expected_planes_bytes())
    data[8] = 4  # the same file numbered 4: encoding 5 is unknown there
    body_size = struct.unpack_from("<I", data, len(data) - 8)[0]
    body = bytes(data[len(data) - 8 - body_size : len(data) - 8])
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:16]) + body))
    with pytest.raises(FormatError, match="unknown encoding 5"):
        container.from_bytes(bytes(data))


def test_version_3_form_of_the_writers_records_is_the_version_3_golden():
    assert encode(small_model(), 3) == expected_small_bytes_v3()


def test_version_2_form_of_the_writers_records_is_the_version_2_golden():
    # The helper that makes version-2 files for the tests makes the version-2 writer's bytes.
    assert encode(small_model(), 2) == expected_small_bytes_v2()


def test_version_1_layout_of_the_writers_records_is_the_version_1_golden():
    # The helper that makes version-1 files for the tests makes deepzip 0.1's bytes.
    assert encode(small_model(), 1) == expected_small_bytes_v1()


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_bytes_decode_to_hand_computed_tensors(version):
    model = container.from_bytes(EXPECTED_SMALL[version]())
    sd = model.state_dict()
    assert set(sd) == {"fc.weight", "fc.bias"}
    assert bits_equal(sd["fc.weight"], torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert bits_equal(sd["fc.bias"], torch.tensor([1.5, -2.0]))
    w = model.tensors["fc.weight"]
    assert w.index_bits == 2 and w.positions.tolist() == [0, 4] and w.codes.tolist() == [1, 0]


# "w", float16, shape (20,), codebook [0.25], kept at 1 and 10 (codes 0, 0), b = 2:
#   gap 2 -> sym 1; gap 9 -> fillers at 5 and 9 (sym 3 each), then 10 (sym 0);
#   the end n = 20 is 10 past 10 > 4 -> fillers at 14 and 18 (sym 3 each), and
#   20 - 18 = 2 <= 4 ends it: (20 - 10 - 1) >> 2 = 2 trailing fillers, E = 6, K = 2
#   code symbols [0, 1, 1, 0, 1, 1] (1 = filler): lengths [1, 1] -> 0x11;
#   canonical sym0 '0', sym1 '1': '011011' -> 011011(00) -> 0x6C
#   gap symbols [1, 3, 3, 0, 3, 3]: counts [1,1,0,4] -> the unique optimum gives sym3
#   1 bit, sym0 and sym1 2 bits: nibbles 2 2 0 1 -> 0x22 0x01; canonical sym3 '0',
#   sym0 '10', sym1 '11': '11' '0' '0' '10' '0' '0' -> 11001000 -> 0xC8
FILLERS_SECTION = struct.pack("<f", 0.25) + bytes([0x11]) + bytes([0x22, 0x01]) + bytes([0x6C]) + bytes([0xC8])
# Version 3: 0.25 is exactly a float16 (0x3400), so the codebook takes 2 bytes.
FILLERS_SECTION_V3 = bytes([0x00, 0x34]) + FILLERS_SECTION[4:]


def _size(version: int, value: int) -> bytes:
    """A count or size below 128: u32 in version 1, the one-byte varint of its value after."""
    assert 0 <= value < 128
    return struct.pack("<I", value) if version == 1 else bytes([value])


def fillers_file(version: int) -> bytes:
    # version 2: k, b, then varints E = 6, K = 2, C = 1, G = 1 (one byte each); version 3
    # adds flags 0x04 (float16 codebook) and scale axis 0 after b, and TC = 1, TG = 2.
    # Version 4 is version 3's file: a given width is coded as gaps.
    section = FILLERS_SECTION_V3 if version >= 3 else FILLERS_SECTION
    params = {
        1: struct.pack("<HBIII", 1, 2, 6, 1, 1),
        2: struct.pack("<HB", 1, 2) + bytes([6, 2, 1, 1]),
        3: struct.pack("<HBBB", 1, 2, 0x04, 0) + bytes([6, 2, 1, 1, 1, 2]),
    }[min(version, 3)]
    body = (
        _size(version, 1)
        + struct.pack("<H", 1) + b"w"
        + bytes([2, 1]) + struct.pack("<I", 20)  # float16, ndim 1, dims [20]
        + bytes([1]) + _size(version, len(section)) + struct.pack("<I", zlib.crc32(section))
        + params
    )  # fmt: skip
    return seal(version, body, [section])


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_bytes_with_fillers_float16(version):
    record = CodebookTensor(
        (20,), torch.float16, np.array([0.25], np.float32), np.array([1, 10]), np.array([0, 0], np.uint16), 2
    )
    assert spec_entries([1, 10], 20, 2) == [1, 5, 9, 10, 14, 18]
    expected = fillers_file(version)
    assert encode(CompressedModel({"w": record}), version) == expected
    dense = torch.zeros(20, dtype=torch.float16)
    dense[1] = dense[10] = 0.25
    assert bits_equal(container.from_bytes(expected).state_dict()["w"], dense)


def test_helpers_reproduce_the_hand_derived_files():
    # parse_layout / build_layout (and `seal`, the framing the other goldens use) against
    # the hand-derived files: faithful in both directions.
    for version, expected in EXPECTED_SMALL.items():
        layout = parse_layout(expected())
        assert layout["version"] == version
        assert build_layout(layout) == expected()


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_bytes_empty_model(version):
    if version == 1:
        head = MAGIC + struct.pack("<HHI", 1, 0, 4) + struct.pack("<I", 0)
        expected = head + struct.pack("<I", zlib.crc32(head))
    else:
        preamble, body = MAGIC + struct.pack("<HHI", version, 0, 0), bytes([0x00])  # varint count 0
        expected = preamble + body + struct.pack("<II", 1, zlib.crc32(preamble + body))
    assert len(expected) == {1: 24, 2: 25, 3: 25, 4: 25, 5: 25, 6: 25}[version]
    assert encode(CompressedModel({}), version) == expected
    assert container.from_bytes(expected).tensors == {}


RAW_CASES = {
    "a": (torch.tensor([1.0], dtype=torch.float32), 1, struct.pack("<f", 1.0)),
    "b": (torch.tensor([1.0], dtype=torch.float16), 2, bytes([0x00, 0x3C])),
    "c": (torch.tensor([1.0], dtype=torch.bfloat16), 3, bytes([0x80, 0x3F])),
    "d": (torch.tensor([1.0], dtype=torch.float64), 4, struct.pack("<d", 1.0)),
    "e": (torch.tensor([-2], dtype=torch.int64), 5, struct.pack("<q", -2)),
    "f": (torch.tensor([-2], dtype=torch.int32), 6, struct.pack("<i", -2)),
    "g": (torch.tensor([-2], dtype=torch.int16), 7, struct.pack("<h", -2)),
    "h": (torch.tensor([-2], dtype=torch.int8), 8, struct.pack("<b", -2)),
    "i": (torch.tensor([200], dtype=torch.uint8), 9, bytes([200])),
    "j": (torch.tensor([True], dtype=torch.bool), 10, bytes([1])),
}


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_bytes_raw_dtypes(version):
    # One raw record per dtype: code and little-endian element bytes from the spec table.
    body, sections = _size(version, len(RAW_CASES)), []
    for name in sorted(RAW_CASES):
        _, code, section = RAW_CASES[name]
        body += struct.pack("<H", 1) + name.encode() + bytes([code, 1]) + struct.pack("<I", 1)
        body += bytes([0]) + _size(version, len(section)) + struct.pack("<I", zlib.crc32(section))
        sections.append(section)
    expected = seal(version, body, sections)
    model = CompressedModel({name: RawTensor(t) for name, (t, _, _) in RAW_CASES.items()})
    assert encode(model, version) == expected
    state = container.from_bytes(expected).state_dict()
    assert all(bits_equal(state[name], t) for name, (t, _, _) in RAW_CASES.items())


def test_version_1_layout_of_the_golden_model_is_the_file_deepzip_0_1_wrote():
    # tests/container/golden/v1.dzip was written by deepzip 0.1: re-laying the current
    # writer's records out as version 1 gives it byte for byte (codebooks of b = 5, 8 and
    # chosen widths, an alias, raw tensors of several dtypes, attached files).
    from test_golden import build_golden_model

    assert encode(build_golden_model(1), 1) == (GOLDEN / "v1.dzip").read_bytes()


def test_committed_golden_files_parse_with_the_helpers():
    for version in VERSIONS:
        data = (GOLDEN / f"v{version}.dzip").read_bytes()
        layout = parse_layout(data)
        assert layout["version"] == version
        assert build_layout(layout) == data


# ---------------------------------------------------------------- round trips


RAW_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
]  # fmt: skip


def random_tensor(gen, dtype, shape):
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 100).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", RAW_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (3, 4, 5), (1, 1, 1, 1, 1, 1, 1, 2)])
def test_round_trip_raw(dtype, shape, version):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((dtype, shape)).encode()))
    tensor = random_tensor(gen, dtype, shape)
    data = encode(CompressedModel({"t": RawTensor(tensor)}), version)
    # The section holds the elements row-major, little-endian, per the spec.
    layout = parse_layout(data)
    record, section = layout["records"][0], layout["sections"][0]
    assert record["dims"] == list(shape)
    numel = int(np.prod(shape, dtype=np.int64))
    if record["enc"] == ENC_PLANES:  # version 5, where the byte planes are smaller
        assert version >= 5 and record["size"] < numel * tensor.element_size()
        section = unplane(record["planes"], section, numel)
    assert record["enc"] in (ENC_RAW, ENC_PLANES) and len(section) == numel * tensor.element_size()
    if dtype == torch.bfloat16:
        reference = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    elif dtype == torch.bool:
        reference = tensor.numpy().astype(np.uint8).tobytes()
    else:
        reference = tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<")).tobytes()
    assert section == reference
    out = container.from_bytes(data).state_dict()["t"]
    assert bits_equal(out, tensor)


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_special_float_values(version):
    values = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -3.5]
    tensors = {f"x{i}": torch.tensor(values, dtype=dt) for i, dt in enumerate(RAW_DTYPES[:4])}
    nan_payload = torch.tensor([0x7FC01234], dtype=torch.int32).view(torch.float32)
    tensors["payload"] = nan_payload
    model = CompressedModel({k: RawTensor(v) for k, v in tensors.items()})
    out = container.from_bytes(encode(model, version)).state_dict()
    for name, tensor in tensors.items():
        assert bits_equal(out[name], tensor), name


def test_round_trip_non_contiguous_raw():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t = base.t()  # non-contiguous view, shape (4, 3)
    data = container.to_bytes(CompressedModel({"t": RawTensor(t)}))
    layout = parse_layout(data)
    record, section = layout["records"][0], layout["sections"][0]
    if record["enc"] == ENC_PLANES:
        section = unplane(record["planes"], section, t.numel())
    assert section == np.ascontiguousarray(t.numpy()).astype("<f4").tobytes()
    assert bits_equal(container.from_bytes(data).state_dict()["t"], t.contiguous())


def test_decoded_raw_tensor_is_writable_and_owned():
    data = container.to_bytes(CompressedModel({"t": RawTensor(torch.ones(4))}))
    out = container.from_bytes(bytearray(data)).state_dict()["t"]
    out += 1  # must not raise (read-only buffer) and must not alias the input
    assert container.from_bytes(data).state_dict()["t"].tolist() == [1.0] * 4


def dense_reference(shape, dtype, codebook, positions, codes):
    """Plain-Python dense decode: zeros, then codebook[code] at each flat position."""
    numel = int(np.prod(shape, dtype=np.int64))
    flat = [0.0] * numel
    for p, c in zip(positions.tolist(), codes.tolist()):
        flat[p] = float(codebook[c])
    return torch.tensor(flat, dtype=torch.float32).reshape(shape).to(dtype)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("k", [1, 2, 16, 256, 4096])
@pytest.mark.parametrize("index_bits", [None, 1, 4, 12])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_round_trip_codebook(k, index_bits, density, version):
    rng = np.random.default_rng(k * 7 + (index_bits or 0) + int(density * 100))
    shape = (6, 5, 3, 3)
    numel = int(np.prod(shape))
    positions = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
    codes = rng.integers(0, k, positions.size).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    record = CodebookTensor(shape, torch.float32, codebook, positions, codes, index_bits)
    data = encode(CompressedModel({"conv.weight": record}), version)
    # E counts the kept weights plus the spec's fillers, trailing ones included; a record
    # whose weights are all kept is dense from version 2 on (b = 0: E = K = numel, no gaps).
    # Version 4 may code the positions as significance flags instead (b = 0, E = K), only
    # when the width is left open and some weights are pruned.
    params = parse_layout(data)["records"][0]["params"]
    significance = bool(params.get("flags", 0) & SIGNIFICANCE)
    assert not significance or (version >= 4 and index_bits is None and density < 1.0)
    if significance:
        assert params["b"] == 0 and params["E"] == params["K"] == positions.size
    else:
        assert params["E"] == len(spec_entries(positions, numel, params["b"]))
        assert numel <= (params["E"] + 1) << params["b"]
    assert params.get("K", positions.size) == positions.size
    dense = version >= 2 and index_bits is None and density == 1.0
    assert (params["b"] == 0) == (dense or significance)
    back = container.from_bytes(data).tensors["conv.weight"]
    assert isinstance(back, CodebookTensor)
    assert back.shape == shape and back.dtype == torch.float32
    assert back.codebook.tobytes() == codebook.tobytes()
    assert (back.positions is None) == dense
    assert back.flat_positions().tolist() == positions.tolist()
    assert back.codes.tolist() == codes.tolist()
    if index_bits is not None:
        assert back.index_bits == index_bits
    ref = dense_reference(shape, torch.float32, codebook, positions, codes)
    assert bits_equal(back.to_dense(), ref)
    assert bits_equal(container.from_bytes(data).state_dict()["conv.weight"], record.to_dense())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_codebook_float_dtypes(dtype, version):
    codebook = np.array([-1.25, 0.1, 3e38, -0.0], np.float32)
    positions = np.array([0, 3, 17, 39], np.int64)
    codes = np.array([0, 1, 2, 3], np.uint16)
    record = CodebookTensor((4, 10), dtype, codebook, positions, codes, None)
    out = container.from_bytes(encode(CompressedModel({"w": record}), version)).state_dict()["w"]
    # The decoded value is the float32 codebook value converted to the record's dtype.
    assert bits_equal(out, dense_reference((4, 10), dtype, codebook, positions, codes))


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_mixed_model_state_dict(version):
    gen = torch.Generator().manual_seed(3)
    tensors = {f"raw_{str(dt).split('.')[-1]}": RawTensor(random_tensor(gen, dt, (3, 2))) for dt in RAW_DTYPES}
    tensors["scalar"] = RawTensor(torch.tensor(2.5, dtype=torch.float64))
    tensors["empty"] = RawTensor(torch.zeros(0, 4, dtype=torch.int16))
    tensors["ünïcode.wéight"] = small_model().tensors["fc.weight"]
    tensors["all.kept"] = CodebookTensor((3, 4), torch.float16, np.array([1.0, -2.0], np.float32), None, np.arange(12, dtype=np.uint16) % 2)
    model = CompressedModel(tensors)
    back = container.from_bytes(encode(model, version))
    expected, got = model.state_dict(), back.state_dict()
    assert set(got) == set(expected)
    for name in expected:
        assert bits_equal(got[name], expected[name]), name


# ---------------------------------------------------------------- determinism


def test_same_tensors_any_insertion_order_same_bytes():
    gen = torch.Generator().manual_seed(5)
    items = [(f"layer{i}.{kind}", RawTensor(torch.randn(3, generator=gen))) for i in range(4) for kind in ("b", "a")]
    items.append(("fc.weight", small_model().tensors["fc.weight"]))
    forward = container.to_bytes(CompressedModel(dict(items)))
    backward = container.to_bytes(CompressedModel(dict(reversed(items))))
    shuffled = [items[i] for i in np.random.default_rng(1).permutation(len(items))]
    assert forward == backward == container.to_bytes(CompressedModel(dict(shuffled)))
    # Records, and so sections, appear sorted by name.
    names = [r["name"].decode() for r in parse_layout(forward)["records"]]
    assert names == sorted(name for name, _ in items)


# ---------------------------------------------------------------- write / read


def test_write_creates_file_and_returns_size(tmp_path):
    path = tmp_path / "m.dzip"
    size = container.write(small_model(), path)
    assert size == path.stat().st_size == len(expected_written())
    assert path.read_bytes() == expected_written()
    assert os.listdir(tmp_path) == ["m.dzip"]
    assert bits_equal(container.read(path).state_dict()["fc.bias"], torch.tensor([1.5, -2.0]))


def test_read_version_1_file_from_disk(tmp_path):
    path = tmp_path / "old.dzip"
    path.write_bytes(expected_small_bytes_v1())
    assert bits_equal(container.read(path).state_dict()["fc.weight"], torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))


def test_write_refuses_to_overwrite(tmp_path):
    path = tmp_path / "m.dzip"
    path.write_bytes(b"precious")
    with pytest.raises(DeepzipError):
        container.write(small_model(), path)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["m.dzip"]


def test_write_overwrite_replaces(tmp_path):
    path = tmp_path / "m.dzip"
    path.write_bytes(b"old contents, longer than nothing")
    size = container.write(small_model(), path, overwrite=True)
    assert path.read_bytes() == expected_written() and size == len(expected_written())
    assert os.listdir(tmp_path) == ["m.dzip"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("existing", [True, False])
def test_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch, failing, existing):
    path = tmp_path / "m.dzip"
    if existing:
        path.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError):
        container.write(small_model(), path, overwrite=True)
    monkeypatch.undo()
    if existing:
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["m.dzip"]
    else:
        assert os.listdir(tmp_path) == []
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_write_relative_path_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    container.write(small_model(), "rel.dzip")
    assert (tmp_path / "rel.dzip").read_bytes() == expected_written()
    assert os.listdir(tmp_path) == ["rel.dzip"]


def test_read_missing_path(tmp_path):
    with pytest.raises(DeepzipError):
        container.read(tmp_path / "nope.dzip")
    with pytest.raises(DeepzipError):
        container.read(tmp_path)  # a directory is no file either


# ---------------------------------------------------------------- errors and writer consistency


def test_rejections_are_format_errors_and_deepzip_errors():
    assert issubclass(FormatError, DeepzipError)
    assert deepzip.FormatError is FormatError
    for cls in (ChecksumError, TruncatedError, VersionError):
        assert issubclass(cls, FormatError)
        assert getattr(deepzip, cls.__name__) is cls


@pytest.mark.parametrize(
    "record",
    [
        CodebookTensor((4,), torch.int32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 3),
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 13),
        CodebookTensor((4,), torch.float32, np.ones(5000, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 3),
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 0),
        CodebookTensor((4,), torch.int16, np.ones(2, np.float32), None, np.array([0, 1, 1, 0], np.uint16)),
        # A code of k is the filler symbol, above k no symbol at all: sparse and dense.
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 2], np.uint16), 3),
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), None, np.array([0, 1, 2, 0], np.uint16)),
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), None, np.array([0, 5, 1, 0], np.uint16)),
    ],
    ids=["int-dtype-codebook", "index-bits-13", "k-5000", "index-bits-0", "int-dtype-dense",
         "sparse-code-k", "dense-code-k", "dense-code-above-k"],
)  # fmt: skip
def test_writer_refuses_records_its_reader_would_reject(record):
    """The writer refuses any record docs/FORMAT.md forbids: never a dead file.

    Refusing is a DeepzipError (ConfigError), or the codec's ValueError for codes out of
    range; writing a file is fine only if it reads back.
    """
    try:
        data = container.to_bytes(CompressedModel({"w": record}))
    except (DeepzipError, ValueError):
        return  # refusing to write is the correct behaviour
    container.from_bytes(data).state_dict()  # otherwise the file must at least be readable


@pytest.mark.parametrize("version", VERSIONS)
def test_bool_bytes_other_than_0_or_1_are_rejected(version):
    layout = parse_layout(encode(CompressedModel({"flags": RawTensor(torch.tensor([True, False, True]))}), version))
    layout["sections"][0] = bytes([1, 2, 1])
    # The section's crc is recomputed, so that the semantic check, not the checksum, fires.
    with pytest.raises(FormatError, match="bool"):
        container.from_bytes(build_layout(layout))


@pytest.mark.parametrize("version", VERSIONS)
def test_tied_tensors_are_stored_once_and_decode_shared(version):
    shared = RawTensor(torch.arange(1000, dtype=torch.float32))
    tied = encode(CompressedModel({"encoder.embed": shared, "decoder.out": shared}), version)
    untied = encode(CompressedModel({"encoder.embed": shared, "decoder.out": RawTensor(shared.tensor.clone())}), version)
    stored = max(r["size"] for r in parse_layout(tied)["records"])  # the one stored section (version 5: maybe byte planes)
    assert len(untied) - len(tied) > stored - len("encoder.embed") - 1
    state = container.from_bytes(tied).state_dict()
    assert state["encoder.embed"] is state["decoder.out"]
    assert torch.equal(state["decoder.out"], shared.tensor)
    # Stored under the first name in sorted order; the alias's section names it.
    layout = parse_layout(tied)
    assert [r["name"].decode() for r in layout["records"]] == ["decoder.out", "encoder.embed"]
    assert [r["enc"] for r in layout["records"]] == [ENC_PLANES if version >= 5 else ENC_RAW, 2]  # arange's bytes code smaller
    assert layout["sections"][1] == b"decoder.out"


@pytest.mark.parametrize("version", VERSIONS)
def test_files_travel_with_the_model(version):
    model = CompressedModel({"w": RawTensor(torch.ones(2))}, {"config.json": b'{"a": 1}', "sub/vocab.txt": b"x\ny"})
    back = container.from_bytes(encode(model, version))
    assert back.files == model.files
    assert set(back.state_dict()) == {"w"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a//b", "a/./b", "c:\\x", "C:x", "a\\b", "x\x00"])
def test_unsafe_file_names_are_refused_by_writer_and_reader(name, version):
    with pytest.raises(DeepzipError):
        container.to_bytes(CompressedModel({}, {name: b"1"}))
    # A crafted file with that name, valid CRCs: the reader refuses it too.
    layout = parse_layout(encode(CompressedModel({}, {"n": b"1"}), version))
    layout["records"][0]["name"] = name.encode()
    with pytest.raises(FormatError, match="relative path"):
        container.from_bytes(build_layout(layout))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "target, words",
    [(b"zzzz", "not a stored tensor"), (b"bbbb", "not a stored tensor"), (b"ffff", "not a stored tensor"), (b"oooo", "differs")],
)
def test_bad_alias_targets_are_rejected(target, words, version):
    stored = RawTensor(torch.ones(3))
    model = CompressedModel({"aaaa": stored, "bbbb": stored, "cccc": stored, "oooo": RawTensor(torch.ones(4))}, {"ffff": b"123"})
    layout = parse_layout(encode(model, version))
    # Records in order: aaaa (raw), bbbb -> "aaaa", cccc -> "aaaa", oooo (raw), ffff (file).
    assert [r["enc"] for r in layout["records"]] == [0, 2, 2, 0, 3]
    assert layout["sections"][2] == b"aaaa"
    layout["sections"][2] = target
    with pytest.raises(FormatError, match=words) as error:
        container.from_bytes(build_layout(layout))
    assert "cccc" in str(error.value)
