"""Damaged .dzip files are rejected with FormatError, in every format version (1, 2 and 3).

Framing damage (magic, version, flags, truncation, checksums, header sizes) and semantic
damage behind valid checksums: each crafted file is small_model's file of the version
under test, edited at the spec level and re-sealed by `layout.build_layout`, so the
reader's checks behind the crc32s are reached. Version-1 and version-2 files keep their
reader paths covered; checks that exist in some versions only are in test_reader_v2.py
and test_reader_v3.py.
"""

import struct

import numpy as np
import pytest
import torch
from layout import (
    BIAS,
    CURRENT,
    MAGIC,
    VERSIONS,
    WEIGHT,
    assert_rejected,
    build_layout,
    crafted,
    encode,
    header_body,
    parse_layout,
    part_offsets,
    seal,
    small_bytes,
    varint,
)

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ChecksumError, FormatError, TruncatedError, VersionError

pytestmark = pytest.mark.parametrize("version", VERSIONS)


def header_range(data: bytes, version: int) -> tuple[int, int]:
    """[start, end) of the header (record count and records) of a well-formed file."""
    if version == 1:
        (size,) = struct.unpack_from("<I", data, 12)
        return 16, 16 + size
    (size,) = struct.unpack_from("<I", data, len(data) - 8)  # the trailer: u32 H, u32 crc
    return len(data) - 8 - size, len(data) - 8


def header_crc_offset(data: bytes, version: int) -> int:
    return header_range(data, version)[1] if version == 1 else len(data) - 4


# ---------------------------------------------------------------- framing


def test_parse_build_helpers_are_faithful(version):
    data = small_bytes(version)
    assert build_layout(parse_layout(data)) == data


def test_bad_magic(version):
    data = bytearray(small_bytes(version))
    for i in range(8):
        damaged = bytearray(data)
        damaged[i] ^= 0x20
        with pytest.raises(FormatError):
            container.from_bytes(bytes(damaged))
    with pytest.raises(FormatError):
        container.from_bytes(b"PK\x03\x04" + bytes(100))


@pytest.mark.parametrize("newer", [CURRENT + 1, 0xFFFF])
def test_newer_version(version, newer):
    layout = parse_layout(small_bytes(version))
    with pytest.raises(VersionError, match="newer"):
        container.from_bytes(build_layout(layout, version_field=newer))
    # Rejected before anything past the preamble is looked at (not as a truncation).
    with pytest.raises(VersionError, match="newer"):
        container.from_bytes(MAGIC + struct.pack("<HHI", newer, 0, 0xFFFFFFFF))


def test_version_zero(version):
    with pytest.raises(VersionError):
        container.from_bytes(build_layout(parse_layout(small_bytes(version)), version_field=0))


FIELDS_OF = {1: 1, 2: 2, 3: 3, 4: 3, 5: 3, 6: 3}  # whose record fields each version's header holds


@pytest.mark.parametrize("step", [1, 2])
def test_the_other_versions_layout_is_rejected(version, step):
    # The same header and sections laid out as one version but labelled as another: the
    # framing (v1 against the others) or the codebook record's fields (v2 against v3, v4)
    # differ. Version 4's fields are version 3's (it adds a flag), so the label is taken
    # among the versions of other fields.
    others = [v for v in VERSIONS if FIELDS_OF[v] != FIELDS_OF[version]]
    label = others[(step - 1) % len(others)]
    layout = parse_layout(small_bytes(version))
    with pytest.raises(FormatError):
        container.from_bytes(build_layout(layout, version_field=label))


@pytest.mark.parametrize("flags", [1, 0x8000])
def test_nonzero_flags(version, flags):
    layout = parse_layout(small_bytes(version))
    layout["flags"] = flags
    with pytest.raises(FormatError, match="flags"):
        container.from_bytes(build_layout(layout))


def test_every_proper_prefix_is_rejected(version):
    data = small_bytes(version)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])
    if version == 1:
        # Once the 16-byte preamble is whole, a cut is reported as a truncation. (A cut
        # version-2 file ends in other bytes than its trailer: that may read as a trailer
        # whose header crc does not match, a ChecksumError.)
        for cut in range(16, len(data)):
            with pytest.raises(TruncatedError):
                container.from_bytes(data[:cut])


def test_prefix_cut_inside_preamble_or_trailer_is_a_truncation(version):
    data = small_bytes(version)
    for cut in range(8, 16 if version == 1 else 28):
        with pytest.raises(TruncatedError):
            container.from_bytes(data[:cut])


def test_every_proper_prefix_with_empty_sections_is_rejected(version):
    model = CompressedModel(
        {
            "e": RawTensor(torch.zeros(0)),
            # 5 < 2**3 elements: no kept weight and no filler, so both streams are empty.
            "z": CodebookTensor((5,), torch.float32, np.ones(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16), 3),
        }
    )
    data = encode(model, version)
    params = parse_layout(data)["records"][1]["params"]
    assert (params["E"], params["C"], params["G"], params.get("K", 0)) == (0, 0, 0, 0)
    container.from_bytes(data)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])
    if version == 1:
        for cut in range(16, len(data)):
            with pytest.raises(TruncatedError):
                container.from_bytes(data[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\xff", b"\x00" * 17])
def test_trailing_bytes(version, tail):
    with pytest.raises(FormatError):
        container.from_bytes(small_bytes(version) + tail)


def test_every_single_byte_corruption_is_rejected(version):
    # CRC-32 detects every single-byte error, so no flip anywhere may yield a valid file.
    data = small_bytes(version)
    for i in range(len(data)):
        for xor in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= xor
            with pytest.raises(FormatError):
                container.from_bytes(bytes(damaged))


def test_header_crc_mismatch(version):
    data = small_bytes(version)
    start, _ = header_range(data, version)
    damaged = bytearray(data)
    damaged[start + (4 if version == 1 else 1) + 2 + 1] ^= 0x01  # inside the first record's name
    with pytest.raises(ChecksumError, match="(?i)checksum|crc"):
        container.from_bytes(bytes(damaged))
    damaged = bytearray(data)
    damaged[header_crc_offset(data, version)] ^= 0x01  # the stored crc itself
    with pytest.raises(ChecksumError, match="(?i)checksum|crc"):
        container.from_bytes(bytes(damaged))


@pytest.mark.parametrize("which", [0, 1])
def test_section_crc_mismatch(version, which):
    layout = parse_layout(small_bytes(version))
    name = layout["records"][which]["name"].decode()
    section = bytearray(layout["sections"][which])
    section[-1] ^= 0x04
    layout["sections"][which] = bytes(section)
    with pytest.raises(ChecksumError, match="(?i)checksum|crc") as err:
        container.from_bytes(build_layout(layout, fix_section_crcs=False))
    assert name in str(err.value)


def test_header_size_past_end(version):
    layout = parse_layout(small_bytes(version))
    # The header size (v1: the preamble's u32; v2: the trailer's u32) beyond the file.
    huge = {"word": 0xFFFFFFFF} if version == 1 else {"body_size": 0xFFFFFFFF}
    with pytest.raises(TruncatedError):
        container.from_bytes(build_layout(layout, **huge))


def test_tensor_count_too_large_behind_valid_crc(version):
    layout = parse_layout(small_bytes(version))
    body = header_body(layout, version)
    # v1: the u32 count; v2: the one-byte varint 2 becomes the 5-byte varint of 2**32 - 1.
    body = (struct.pack("<I", 0xFFFFFFFF) + body[4:]) if version == 1 else varint(0xFFFFFFFF) + body[1:]
    with pytest.raises(FormatError, match="record count"):
        container.from_bytes(seal(version, bytes(body), layout["sections"]))


def test_header_with_unused_bytes_behind_valid_crc(version):
    layout = parse_layout(small_bytes(version))
    body = header_body(layout, version) + b"\x00"
    with pytest.raises(FormatError, match="unused bytes"):
        container.from_bytes(seal(version, body, layout["sections"]))


# ---------------------------------------------------------------- semantics behind valid crcs


def test_duplicate_names(version):
    def edit(records, sections):
        records[WEIGHT]["name"] = b"fc.bias"

    # Both records still parse on their own, the second one is a repeat.
    assert_rejected(crafted(edit, version), "fc.bias", "duplicate")


@pytest.mark.parametrize("code", [0, 11, 255])
@pytest.mark.parametrize("which", [BIAS, WEIGHT])
def test_unknown_dtype(version, code, which):
    def edit(records, sections):
        records[which]["dtype"] = code

    assert_rejected(crafted(edit, version), ["fc.bias", "fc.weight"][which])


@pytest.mark.parametrize("encoding", [2, 4, 255])
def test_unknown_encoding(version, encoding):
    # 2 is an alias, whose section must be a stored tensor's UTF-8 name: the 8 float bytes
    # are not UTF-8. 4 and up are no encoding at all.
    def edit(records, sections):
        records[BIAS]["enc"] = encoding

    assert_rejected(crafted(edit, version), "fc.bias")


@pytest.mark.parametrize("ndim", [9, 255])
def test_too_many_dims(version, ndim):
    def edit(records, sections):
        records[BIAS]["ndim"] = ndim
        records[BIAS]["dims"] = [2] + [1] * (ndim - 1)  # same element count

    assert_rejected(crafted(edit, version), "fc.bias")


def test_eight_dims_is_fine(version):
    def edit(records, sections):
        records[BIAS]["ndim"] = 8
        records[BIAS]["dims"] = [1, 1, 1, 2, 1, 1, 1, 1]

    out = container.from_bytes(crafted(edit, version)).state_dict()["fc.bias"]
    assert out.shape == (1, 1, 1, 2, 1, 1, 1, 1)


def test_element_count_over_2_40(version):
    def edit(records, sections):
        records[BIAS]["ndim"] = 3
        records[BIAS]["dims"] = [1 << 20, 1 << 20, 2]

    assert_rejected(crafted(edit, version), "fc.bias")


@pytest.mark.parametrize("k", [0, 4097, 5000, 0xFFFF])
def test_codebook_size_out_of_range(version, k):
    def edit(records, sections):
        records[WEIGHT]["params"]["k"] = k

    assert_rejected(crafted(edit, version), "fc.weight")


@pytest.mark.parametrize("b", [0, 13, 255])
def test_index_bits_out_of_range(version, b):
    # b = 0 is out of range in version 1; in version 2 it marks a dense record, which
    # this one (2 entries for 6 elements, a gap stream) is not.
    def edit(records, sections):
        records[WEIGHT]["params"]["b"] = b

    assert_rejected(crafted(edit, version), "fc.weight")


def test_entry_count_larger_than_numel(version):
    # numel = 6; E = 7 (streams would need more bits, but E is checked against numel).
    def edit(records, sections):
        records[WEIGHT]["params"]["E"] = 7

    assert_rejected(crafted(edit, version), "fc.weight", "7 entries for 6 elements")


def test_codebook_section_size_not_sum_of_parts(version):
    def edit(records, sections):
        sections[WEIGHT] = sections[WEIGHT] + b"\x00"
        records[WEIGHT]["size"] += 1

    assert_rejected(crafted(edit, version), "fc.weight", "sum of its parts")


def test_codebook_section_size_smaller_than_parts(version):
    def edit(records, sections):
        sections[WEIGHT] = sections[WEIGHT][:-1]
        records[WEIGHT]["size"] -= 1

    assert_rejected(crafted(edit, version), "fc.weight", "sum of its parts")


def test_raw_section_size_not_matching_shape(version):
    def edit_shape(records, sections):
        records[BIAS]["dims"] = [3]  # 12 bytes expected, 8 stored

    def edit_size(records, sections):
        sections[BIAS] = sections[BIAS] + b"\x00" * 4
        records[BIAS]["size"] += 4

    def edit_dtype(records, sections):
        records[BIAS]["dtype"] = 4  # float64: 16 bytes expected

    for edit in (edit_shape, edit_size, edit_dtype):
        assert_rejected(crafted(edit, version), "fc.bias", "raw section size")


def test_raw_reinterpretation_with_matching_size_is_valid(version):
    # float32 [2] -> int16 [4]: 8 bytes either way, so this is a valid (different) file.
    def edit(records, sections):
        records[BIAS]["dtype"] = 7
        records[BIAS]["dims"] = [4]

    out = container.from_bytes(crafted(edit, version)).state_dict()["fc.bias"]
    assert out.tolist() == list(struct.unpack("<4h", struct.pack("<2f", 1.5, -2.0)))


@pytest.mark.parametrize("code", [5, 6, 7, 8, 9, 10])
def test_codebook_encoding_on_non_float_dtype(version, code):
    def edit(records, sections):
        records[WEIGHT]["dtype"] = code

    assert_rejected(crafted(edit, version), "fc.weight", "floating dtype")


@pytest.mark.parametrize("code", [2, 3, 4])
def test_codebook_encoding_on_other_float_dtypes_is_valid(version, code):
    def edit(records, sections):
        records[WEIGHT]["dtype"] = code

    out = container.from_bytes(crafted(edit, version)).state_dict()["fc.weight"]
    assert out.dtype == container.DTYPES[code]
    assert out.float().tolist() == [[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]


@pytest.mark.parametrize("name", [b"", b"x" * 1025, b"fc.\xff\xfe"], ids=["empty", "1025-bytes", "not-utf8"])
def test_bad_names(version, name):
    def edit(records, sections):
        records[BIAS]["name"] = name

    assert_rejected(crafted(edit, version), None, "name")


def test_name_1024_bytes_is_fine(version):
    def edit(records, sections):
        records[BIAS]["name"] = b"x" * 1024

    assert "x" * 1024 in container.from_bytes(crafted(edit, version)).tensors


# small_model's weight section: codebook (8 bytes of float32 in v1 and v2, 4 of float16 in
# v3), code-length table (2 bytes), gap-length table (2), code stream (1), gap stream (1).


def replace_part(version, part, new):
    """An edit that overwrites the start of the weight section's `part` with `new`."""

    def edit(records, sections):
        offset, _ = part_offsets(version, records[WEIGHT])[part]
        s = bytearray(sections[WEIGHT])
        s[offset : offset + len(new)] = new
        sections[WEIGHT] = bytes(s)

    return edit


@pytest.mark.parametrize(
    "part, new, why",
    [
        ("code_table", bytes([0x11, 0x10]), "Kraft: three 1-bit codes"),
        ("code_table", bytes([0x11, 0x01]), "nonzero pad nibble of the 3-symbol table"),
        ("gap_table", bytes([0x11, 0x11]), "Kraft: four 1-bit codes"),
        ("code_stream", bytes([0x81]), "nonzero padding bits in the code stream"),
        ("gap_stream", bytes([0x41]), "nonzero padding bits in the gap stream"),
        ("code_table", bytes([0x22, 0x00]), "incomplete code {00, 01}: stream '10..' is no code word"),
        ("code_table", bytes([0x00, 0x00]), "no code for 2 entries"),
    ],
)
def test_damaged_codebook_section(version, part, new, why):
    assert_rejected(crafted(replace_part(version, part, new), version), "fc.weight")


def test_long_codes_do_not_fit_the_streams(version):
    # Nibbles cap lengths at 15; a table of all-15 lengths for 3 symbols is a valid (if
    # wasteful) incomplete code, but then the 1-byte streams are too short for 2 symbols.
    assert_rejected(crafted(replace_part(version, "code_table", bytes([0xFF, 0xF0])), version), "fc.weight")


def test_stream_with_trailing_byte(version):
    def edit(records, sections):
        s = sections[WEIGHT]
        end = sum(part_offsets(version, records[WEIGHT])["code_stream"])
        sections[WEIGHT] = s[:end] + b"\x00" + s[end:]  # code stream 0x80 0x00
        records[WEIGHT]["params"]["C"] = 2
        records[WEIGHT]["size"] += 1

    assert_rejected(crafted(edit, version), "fc.weight")


def test_more_entries_than_the_streams_have_bits(version):
    # E = 9 entries need at least 9 bits in each stream, but each holds 1 byte: refused
    # from the header (E <= 8 C), before decoding. The shape grows to 12 elements so that
    # E <= numel and only the stream length is wrong.
    def edit(records, sections):
        records[WEIGHT]["dims"] = [4, 3]
        records[WEIGHT]["params"]["E"] = 9

    assert_rejected(crafted(edit, version), "fc.weight", "cannot fit in streams")


def test_stream_ends_early(version):
    # E = 5 fits 8 bits per stream, but with 2-bit codes (table 2 2 2) the code stream
    # needs 10: the decoder finds the stream ending early. (The gap stream, 1-bit codes,
    # holds 5 symbols: '01000' then zero padding.)
    def edit(records, sections):
        records[WEIGHT]["dims"] = [4, 3]
        records[WEIGHT]["params"]["E"] = 5
        if "K" in records[WEIGHT]["params"]:
            records[WEIGHT]["params"]["K"] = 5
        replace_part(version, "code_table", bytes([0x22, 0x20]))(records, sections)

    assert_rejected(crafted(edit, version), "fc.weight", "code or gap stream: stream truncated")


def test_gap_stream_past_element_count(version):
    # Entries at 0 and 4: a 2x2 tensor (4 elements) has no position 4.
    def edit(records, sections):
        records[WEIGHT]["dims"] = [2, 2]

    assert_rejected(crafted(edit, version), "fc.weight")


def test_last_entry_at_last_element_is_fine(version):
    def edit(records, sections):
        records[WEIGHT]["ndim"] = 1
        records[WEIGHT]["dims"] = [5]

    out = container.from_bytes(crafted(edit, version)).state_dict()["fc.weight"]
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, -1.0]


def test_shape_beyond_the_streams_reach(version):
    # fc.weight's entries are 0 and 4 at b = 2, so they reach a tensor of at most
    # 4 + 2**2 = 8 elements. Enlarging the shape behind valid crcs must be caught.
    def with_dims(*dims):
        def edit(records, sections):
            records[WEIGHT]["ndim"] = len(dims)
            records[WEIGHT]["dims"] = list(dims)

        return crafted(edit, version)

    out = container.from_bytes(with_dims(8)).state_dict()["fc.weight"]  # 8 - 4 == 2**2
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0]
    for dims in [(9,), (3, 3), (2, 3, 4), (1 << 20, 1 << 19)]:
        with pytest.raises(FormatError) as err:
            container.from_bytes(with_dims(*dims))
        assert "fc.weight" in str(err.value)
        assert not isinstance(err.value, (ChecksumError, TruncatedError, VersionError))


def test_empty_stream_beyond_its_reach(version):
    # A codebook record with no entries at b = 2 covers up to 2**2 - 1 = 3 elements.
    def model(n):
        nothing = (np.zeros(0, np.int64), np.zeros(0, np.uint16))
        return CompressedModel({"w": CodebookTensor((n,), torch.float32, np.ones(1, np.float32), *nothing, 2)})

    data = encode(model(3), version)
    assert parse_layout(data)["records"][0]["params"]["E"] == 0
    assert container.from_bytes(data).state_dict()["w"].tolist() == [0.0] * 3
    layout = parse_layout(data)
    layout["records"][0]["dims"] = [1 << 30]
    with pytest.raises(FormatError, match="'w'"):
        container.from_bytes(build_layout(layout))
    # And the writer bridges the end with n >> b fillers: 40 >> 2 = 10.
    assert parse_layout(encode(model(40), version))["records"][0]["params"]["E"] == 10


def test_empty_stream_for_exactly_2_pow_b_elements_is_rejected(version):
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.uint16))
    model = CompressedModel({"w": CodebookTensor((3,), torch.float32, np.ones(1, np.float32), *nothing, 2)})
    layout = parse_layout(encode(model, version))
    layout["records"][0]["dims"] = [4]
    with pytest.raises(FormatError, match="'w'"):
        container.from_bytes(build_layout(layout))


def test_crafted_files_are_of_the_version_under_test(version):
    data = crafted(lambda records, sections: None, version)
    assert data == small_bytes(version) and data[8] == version
