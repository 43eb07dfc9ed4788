"""What version 3 of the .dzip format adds, written and read (docs/FORMAT.md, "Version 3").

A codebook record gains a flags byte (bit 0: the code stream is rANS-coded, bit 1: the gap
stream is, bit 2: the codebook entries are float16, bit 3: the scales are), a scale-axis
byte (0: no scales, else the dimension + 1) and the sizes TC and TG of its two tables;
its section is codebook | scales | code table | gap table | code stream | gap stream. A
file may be stored xz-compressed (encoding 4). Crafted files are the writer's, edited at
the spec level (`layout`) and re-sealed with valid crcs, so the checks behind them fire;
expected values come from the spec's formula in numpy (`layout.scaled_reference`) and
expected symbols from a rANS decoder written from the spec (`layout.rans_decode`).
Checks that every version shares are in test_rejections.py.
"""

import lzma
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from layout import (
    CODE_RANS,
    CODEBOOK_F16,
    ENC_ALIAS,
    ENC_CODEBOOK,
    ENC_FILE,
    ENC_FILE_XZ,
    GAP_RANS,
    MAGIC,
    SCALE_F16,
    WEIGHT,
    as_version,
    assert_rejected,
    bits_equal,
    build_layout,
    encode,
    huffman_table_sizes,
    parse_layout,
    part_offsets,
    rans_decode,
    rans_encode,
    rans_frequencies,
    rans_table,
    relative_symbols,
    scaled_reference,
    seal,
    simple_frequencies,
    small_bytes,
    split_section,
    varint,
)

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ChecksumError, FormatError

GOLDEN_V3 = Path(__file__).parent / "golden" / "v3.dzip"
PARTS = ("codebook", "scales", "code_table", "gap_table", "code_stream", "gap_stream")
SIZE_OF_PART = {"code_table": "TC", "gap_table": "TG", "code_stream": "C", "gap_stream": "G"}


# ---------------------------------------------------------------- records and edits


def skewed_dense(shape=(16, 16), k=8, seed=0, dtype=torch.float32) -> CodebookTensor:
    """Every position kept, codes mostly 0: rANS beats Huffman's bit a symbol."""
    rng = np.random.default_rng(seed)
    p = np.array([0.86] + [0.14 / (k - 1)] * (k - 1)) if k > 1 else np.ones(1)
    codes = rng.choice(k, size=int(np.prod(shape)), p=p).astype(np.uint16)
    return CodebookTensor(shape, dtype, rng.normal(size=k).astype(np.float32) * 3.3, None, codes)


def skewed_sparse(shape=(64, 40), k=4, density=0.85, index_bits=None, seed=1, dtype=torch.float32) -> CodebookTensor:
    """Most positions kept (gaps mostly 1) and codes mostly 0: both streams rANS."""
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(int(np.prod(shape))) < density).astype(np.int64)
    p = np.array([0.85] + [0.15 / (k - 1)] * (k - 1)) if k > 1 else np.ones(1)
    codes = rng.choice(k, size=positions.size, p=p).astype(np.uint16)
    return CodebookTensor(shape, dtype, rng.normal(size=k).astype(np.float32) * 3.3, positions, codes, index_bits)


def file_of(**records) -> dict:
    """The version-3 file of `records` (the writer's records, positions as gaps), as a layout."""
    layout = parse_layout(encode(CompressedModel(records), 3))
    assert layout["version"] == 3
    return layout


def record_named(layout: dict, name: str) -> tuple[int, dict]:
    index = next(i for i, r in enumerate(layout["records"]) if r["name"] == name.encode())
    return index, layout["records"][index]


def with_parts(layout: dict, index: int, **parts: bytes) -> bytes:
    """`layout` with parts of record `index`'s codebook section replaced, TC, TG, C, G and
    the section size following; the crcs are recomputed."""
    record = layout["records"][index]
    current = split_section(3, record, layout["sections"][index])
    current.update(parts)
    layout["sections"][index] = b"".join(current[p] for p in PARTS)
    record["size"] = len(layout["sections"][index])
    for part, field in SIZE_OF_PART.items():
        record["params"][field] = len(current[part])
    return build_layout(layout)


# ---------------------------------------------------------------- the record's new fields


@pytest.mark.parametrize("bit", [0x10, 0x20, 0x40, 0x80])
def test_unknown_coding_flag_bits_are_rejected(bit):
    layout = parse_layout(small_bytes(3))
    layout["records"][WEIGHT]["params"]["flags"] |= bit
    assert_rejected(build_layout(layout), "fc.weight", "unknown coding flags")


@pytest.mark.parametrize("axis", [3, 9, 255])
def test_scale_axis_beyond_the_dims_is_rejected(axis):
    layout = parse_layout(small_bytes(3))  # fc.weight is 2-d: scale axis 0, 1 or 2
    layout["records"][WEIGHT]["params"]["axis"] = axis
    assert_rejected(build_layout(layout), "fc.weight", "scale axis")


@pytest.mark.parametrize("axis, scales", [(1, [2.0, -1.0]), (2, [1.0, 0.5, 4.0])])
def test_scales_added_by_hand_decode_along_their_dim(axis, scales):
    # fc.weight = [[0.5, 0, 0], [0, -1, 0]]; scale axis byte 2 is the last dim (the most
    # the byte may say for a 2-d tensor), 1 the first. The scales follow the codebook.
    layout = parse_layout(small_bytes(3))
    record = layout["records"][WEIGHT]
    record["params"]["axis"] = axis
    codebook_bytes = part_offsets(3, record)["codebook"][1]
    section = layout["sections"][WEIGHT]
    layout["sections"][WEIGHT] = section[:codebook_bytes] + struct.pack(f"<{len(scales)}f", *scales) + section[codebook_bytes:]
    record["size"] += 4 * len(scales)
    out = container.from_bytes(build_layout(layout)).state_dict()["fc.weight"]
    base = np.array([[0.5, 0, 0], [0, -1, 0]], np.float32)
    factor = np.array(scales, np.float32).reshape((-1, 1) if axis == 1 else (1, -1))
    assert bits_equal(out, torch.from_numpy(base * factor))


def test_float16_scale_flag_without_scales_is_rejected():
    layout = parse_layout(small_bytes(3))
    layout["records"][WEIGHT]["params"]["flags"] |= SCALE_F16
    assert_rejected(build_layout(layout), "fc.weight", "no scales")


def test_rans_gap_flag_on_a_dense_record_is_rejected():
    layout = file_of(**{"d.weight": skewed_dense()})
    params = layout["records"][0]["params"]
    assert params["b"] == 0 and params["flags"] & CODE_RANS
    params["flags"] |= GAP_RANS
    assert_rejected(build_layout(layout), "d.weight", "no gap stream")


@pytest.mark.parametrize("part, delta", [("code_table", 1), ("code_table", -1), ("gap_table", 1), ("gap_table", -1)])
def test_huffman_table_of_another_size_is_rejected(part, delta):
    # Huffman tables have exactly their version-2 sizes; the section stays consistent.
    layout = parse_layout(small_bytes(3))
    table = split_section(3, layout["records"][WEIGHT], layout["sections"][WEIGHT])[part]
    assert len(table) == 2
    data = with_parts(layout, WEIGHT, **{part: table + b"\x00" if delta > 0 else table[:-1]})
    assert_rejected(data, "fc.weight", "code table of 3 symbols is 2 bytes" if part == "code_table" else "gap table of")


def test_dense_record_with_a_gap_table_is_rejected():
    layout = file_of(**{"d.weight": skewed_dense()})
    assert_rejected(with_parts(layout, 0, gap_table=b"\x00"), "d.weight", "gap table is 1 bytes, must be 0")


@pytest.mark.parametrize(
    "name, edit",
    [
        ("d.weight", "codebook declared float16"),  # 2 bytes an entry too few
        ("s.weight", "codebook declared float32"),  # 2 bytes an entry too many
        ("s.weight", "scales declared float32"),
        ("s.weight", "scales dropped"),  # their bytes left over
        ("d.weight", "scales declared"),  # none there
    ],
)
def test_section_size_follows_the_entry_widths(name, edit):
    # The widths the flags give set the parts' sizes: with the section unchanged, the sum
    # no longer matches.
    scaled = CodebookTensor((4, 3), torch.float32, np.array([0.5, 3.0], np.float32), None, np.arange(12, dtype=np.uint8) % 2,
                            scale=np.array([1.0, 2.0, 4.0], np.float32), scale_axis=1)  # fmt: skip
    layout = file_of(**{"s.weight": scaled, "d.weight": skewed_dense()})
    _, record = record_named(layout, name)
    params = record["params"]
    assert params["flags"] & (CODEBOOK_F16 | SCALE_F16) == (0 if name == "d.weight" else CODEBOOK_F16 | SCALE_F16)
    if edit == "codebook declared float16":
        params["flags"] |= CODEBOOK_F16
    elif edit == "codebook declared float32":
        params["flags"] &= ~CODEBOOK_F16
    elif edit == "scales declared float32":
        params["flags"] &= ~SCALE_F16
    elif edit == "scales dropped":
        params["axis"] = 0
        params["flags"] &= ~SCALE_F16
    else:
        params["axis"] = 2
    assert_rejected(build_layout(layout), name, "sum of its parts")


def test_a_huffman_record_relabelled_rans_is_rejected():
    # The 2-byte Huffman length table 0x11 0x00 read as a rANS table: P = 17 > 16.
    layout = parse_layout(small_bytes(3))
    layout["records"][WEIGHT]["params"]["flags"] |= CODE_RANS
    assert_rejected(build_layout(layout), "fc.weight", "code or gap stream")


def test_a_rans_record_relabelled_huffman_is_rejected():
    layout = file_of(**{"d.weight": skewed_dense()})
    params = layout["records"][0]["params"]
    assert params["TC"] != huffman_table_sizes(8, 0)[0]
    params["flags"] &= ~CODE_RANS
    assert_rejected(build_layout(layout), "d.weight", "Huffman code table")


def test_version_2_fields_read_as_version_3_are_rejected():
    # The version-2 layout of a file, labelled version 3: E, K, C, G are read as flags,
    # scale axis and E, K; the record no longer adds up.
    layout = parse_layout(small_bytes(2))
    with pytest.raises(FormatError):
        container.from_bytes(build_layout(layout, version_field=3))


def test_version_2_form_relabelled_version_3_with_the_new_fields_is_the_same_file():
    # as_version adds flags 0, no scales and the Huffman table sizes: a valid version-3
    # file decoding to what the version-2 file decodes to.
    data = as_version(parse_layout(small_bytes(2)), 3)
    out = container.from_bytes(build_layout(data)).state_dict()
    assert bits_equal(out["fc.weight"], container.from_bytes(small_bytes(2)).state_dict()["fc.weight"])


# ---------------------------------------------------------------- rANS streams


RANS_CASES = {
    "dense k=8": (skewed_dense(), CODE_RANS),
    "dense k=1 (a certain symbol)": (skewed_dense(k=1), CODE_RANS),
    "dense k=4096": (skewed_dense(shape=(4, 2000), k=4096, seed=3), CODE_RANS),
    "sparse both": (skewed_sparse(), CODE_RANS | GAP_RANS),
    "sparse b=12": (skewed_sparse(shape=(3, 20000), density=0.004, index_bits=12, k=3, seed=4), None),
    "sparse b=1": (skewed_sparse(density=0.97, index_bits=1), CODE_RANS | GAP_RANS),
    "sparse float16 bfloat16": (skewed_sparse(dtype=torch.bfloat16, seed=5), CODE_RANS | GAP_RANS),
}


@pytest.mark.parametrize("case", sorted(RANS_CASES))
def test_rans_streams_round_trip_and_follow_the_spec(case):
    record, expected_flags = RANS_CASES[case]
    layout = file_of(w=record)
    (r,), (section,) = layout["records"], layout["sections"]
    params = r["params"]
    if expected_flags is not None:
        assert params["flags"] & (CODE_RANS | GAP_RANS) == expected_flags, params
    assert params["flags"] & (CODE_RANS | GAP_RANS), params
    k, b, entries = params["k"], params["b"], params["E"]
    # The streams, decoded by the spec's rANS (or checked Huffman sizes), give the entries.
    parts = split_section(3, r, section)
    if b == 0:
        gaps, codes = [], [int(c) for c in record.codes]
    else:
        gaps, codes = relative_symbols(record.flat_positions(), record.codes, record.numel, b, k)
    assert entries == len(codes)
    for part, alphabet, flag, symbols in [("code", k + 1, CODE_RANS, codes), ("gap", 1 << b, GAP_RANS, gaps)]:
        if part == "gap" and b == 0:
            assert parts["gap_table"] == parts["gap_stream"] == b""
        elif params["flags"] & flag:
            freqs = rans_frequencies(parts[f"{part}_table"], alphabet)
            assert rans_decode(parts[f"{part}_stream"], freqs, entries) == symbols
            assert rans_encode(symbols, freqs) == parts[f"{part}_stream"]  # the encoder's bytes, exactly
            assert rans_table(freqs) == parts[f"{part}_table"]
        else:
            assert len(parts[f"{part}_table"]) == huffman_table_sizes(k, b)[part == "gap"]
    back = container.from_bytes(build_layout(layout)).tensors["w"]
    assert np.array_equal(back.flat_positions(), record.flat_positions())
    assert np.array_equal(back.codes, record.codes)
    assert bits_equal(container.from_bytes(build_layout(layout)).state_dict()["w"], record.to_dense())


@pytest.mark.parametrize("case", ["dense k=8", "sparse both"])
def test_each_stream_is_no_larger_than_its_huffman_coding(case):
    # Each stream is coded by the smaller of the two coders (at one width: sparse records
    # get b = 2 given, so that both files code the same gap symbols).
    record, _ = RANS_CASES[case]
    if record.positions is not None:
        record = CodebookTensor(record.shape, record.dtype, record.codebook, record.positions, record.codes, 2)
    v3_layout, v2_layout = file_of(w=record), parse_layout(encode(CompressedModel({"w": record}), 2))
    v3 = split_section(3, v3_layout["records"][0], v3_layout["sections"][0])
    v2 = split_section(2, v2_layout["records"][0], v2_layout["sections"][0])
    for part in ("code", "gap"):
        assert len(v3[f"{part}_table"] + v3[f"{part}_stream"]) <= len(v2[f"{part}_table"] + v2[f"{part}_stream"]), part
    assert sum(map(len, v3.values())) < sum(map(len, v2.values()))


def test_a_certain_symbol_costs_no_bytes_and_its_entry_count_is_not_bounded_by_them():
    # k = 1, every code 0: the rANS table is P = 0 with f = 1 for symbol 0 ("00 00"), the
    # stream is empty. So E > 8 C is no damage for rANS: a larger shape with E = K = n
    # decodes, where a Huffman stream would be refused from the header.
    record = CodebookTensor((8, 8), torch.float32, np.array([0.75], np.float32), None, np.zeros(64, np.uint8))
    layout = file_of(w=record)
    params = layout["records"][0]["params"]
    parts = split_section(3, layout["records"][0], layout["sections"][0])
    assert params["flags"] & CODE_RANS and parts["code_table"] == bytes([0x00, 0x00]) and params["C"] == 0
    layout["records"][0]["dims"] = [1000, 1000]
    params.update(E=10**6, K=10**6)
    assert torch.equal(container.from_bytes(build_layout(layout)).state_dict()["w"], torch.full((1000, 1000), 0.75))
    params["flags"] &= ~CODE_RANS
    layout["sections"][0] = parts["codebook"] + bytes([0x10])  # a Huffman table of one 1-bit code
    params["TC"] = 1
    layout["records"][0]["size"] = 5
    assert_rejected(build_layout(layout), "w", "cannot fit in streams")


def test_rans_dense_stream_holding_the_filler_symbol_is_rejected():
    record = skewed_dense(k=3)
    layout = file_of(w=record)
    codes = [int(c) for c in record.codes]
    codes[100] = 3  # the filler symbol k
    freqs = simple_frequencies([codes.count(s) for s in range(4)])
    assert_rejected(with_parts(layout, 0, code_table=rans_table(freqs), code_stream=rans_encode(codes, freqs)), "w", "filler")
    codes[100] = 2  # the same table, no filler: valid
    data = with_parts(file_of(w=record), 0, code_table=rans_table(freqs), code_stream=rans_encode(codes, freqs))
    assert container.from_bytes(data).tensors["w"].codes[100] == 2


def _recoded_gaps(record, edit) -> bytes:
    """`record`'s file with its gap symbols changed by `edit(gaps)` and rANS-coded again."""
    layout = file_of(w=record)
    params = layout["records"][0]["params"]
    gaps, _ = relative_symbols(record.flat_positions(), record.codes, record.numel, params["b"], params["k"])
    edit(gaps)
    freqs = simple_frequencies([gaps.count(s) for s in range(1 << params["b"])])
    return with_parts(layout, 0, gap_table=rans_table(freqs), gap_stream=rans_encode(gaps, freqs))


def test_rans_gap_stream_reaching_past_the_element_count_is_rejected():
    # Every gap the widest (symbol 3, a step of 4): ~58 entries of a 64-element tensor
    # reach position ~231. (One used symbol: a certain one, an empty stream.)
    record = skewed_sparse(shape=(8, 8), density=0.9, index_bits=2)

    def widest(gaps):
        gaps[:] = [3] * len(gaps)

    assert_rejected(_recoded_gaps(record, widest), "'w'", "reaches position")


def test_rans_gap_stream_stopping_short_of_the_end_is_rejected():
    record = skewed_sparse(shape=(8, 8), density=0.9, index_bits=2, seed=7)

    def narrowest(gaps):  # every entry right after the previous one: positions 0 .. E - 1
        gaps[:] = [0] * len(gaps)

    assert_rejected(_recoded_gaps(record, narrowest), "'w'", "before the end")


@pytest.mark.parametrize(
    "damage, words",
    [
        ("table: nothing", "empty frequency table"),
        ("table: one byte more", "code or gap stream"),
        ("table: one byte less", "code or gap stream"),
        ("table: precision 17", "precision 17"),
        ("table: a symbol beyond the alphabet", "more than 9 symbols"),
        ("table: empty, with entries", "no symbols"),
        ("stream: a word more", "code or gap stream"),
        ("stream: a zero top byte", "zero top byte"),
        ("stream: bytes for a certain symbol", "must be empty"),
    ],
)
def test_damaged_rans_tables_and_streams_are_rejected(damage, words):
    record = skewed_dense(k=8)
    layout = file_of(w=record)
    parts = split_section(3, layout["records"][0], layout["sections"][0])
    table, stream = parts["code_table"], parts["code_stream"]
    assert len(stream) > 8  # a head and words
    head = 5 + (len(stream) - 5) % 4  # the state's bytes, the last of them its top byte
    new = {
        "table: nothing": {"code_table": b""},
        "table: one byte more": {"code_table": table + b"\x00"},
        "table: one byte less": {"code_table": table[:-1]},
        "table: precision 17": {"code_table": bytes([17]) + table[1:]},
        # P = 12, a run of 9 unused symbols (token 2 * 8 + 1), then symbol 9 of k + 1 = 9
        "table: a symbol beyond the alphabet": {"code_table": bytes([12]) + varint(2 * 8 + 1) + varint(2 * ((1 << 12) - 1))},
        "table: empty, with entries": {"code_table": b"\xff", "code_stream": b""},
        "stream: a word more": {"code_stream": stream + b"\x01\x00\x00\x00"},
        "stream: a zero top byte": {"code_stream": stream[: head - 1] + b"\x00" + stream[head:]},
        "stream: bytes for a certain symbol": {"code_table": rans_table([1 << 12] + [0] * 8)},
    }[damage]
    assert_rejected(with_parts(layout, 0, **new), "w", words)


def test_a_cut_rans_stream_can_be_another_valid_stream_and_the_crc_catches_it():
    # rANS checks little: the final state 0 and every word read. Once the state reaches 0
    # the symbol owning slot 0 decodes for free, so a damaged stream may decode, to other
    # symbols. Here the stream without its last byte is the encoder's stream of other
    # codes; only the section's crc32 tells the damage.
    record = skewed_dense(k=8)
    layout = file_of(w=record)
    parts = split_section(3, layout["records"][0], layout["sections"][0])
    freqs = rans_frequencies(parts["code_table"], 9)
    cut = parts["code_stream"][:-1]
    other = rans_decode(cut, freqs, record.numel)
    assert other != [int(c) for c in record.codes] and rans_encode(other, freqs) == cut
    data = with_parts(layout, 0, code_stream=cut)
    assert container.from_bytes(data).tensors["w"].codes.tolist() == other
    section = layout["sections"][0]
    layout["sections"][0] = section[:-1]
    layout["records"][0]["size"] -= 1
    layout["records"][0]["params"]["C"] -= 1
    with pytest.raises(ChecksumError):
        container.from_bytes(build_layout(layout, fix_section_crcs=False))


def test_every_proper_prefix_of_the_v3_golden_is_rejected():
    data = GOLDEN_V3.read_bytes()
    container.from_bytes(data)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])


# ---------------------------------------------------------------- xz file records


TEXT = "".join(f"{i} ab{i % 13} cd{i % 7}\n" for i in range(500)).encode()


def xz_file(content: bytes = TEXT, name: str = "tokenizer/merges.txt") -> dict:
    layout = parse_layout(container.to_bytes(CompressedModel({"w": RawTensor(torch.ones(2))}, {name: content})))
    return layout


@pytest.mark.parametrize(
    "content, encoding",
    [(TEXT, ENC_FILE_XZ), (b"", ENC_FILE), (b"{}", ENC_FILE), (np.random.default_rng(0).bytes(3000), ENC_FILE), (bytes(100000), ENC_FILE_XZ)],
    ids=["text", "empty", "tiny", "incompressible", "zeros"],
)
def test_files_are_stored_xz_compressed_when_that_is_smaller(content, encoding):
    layout = xz_file(content)
    record, section = layout["records"][1], layout["sections"][1]
    assert record["enc"] == encoding and record["dtype"] == 9 and record["dims"] == [len(content)]
    if encoding == ENC_FILE_XZ:
        assert len(section) < len(content)
        # One .xz stream (magic FD 37 7A 58 5A 00), stream flags 00 01: a CRC-32 check.
        assert section[:8] == bytes.fromhex("fd377a585a000001")
        assert lzma.decompress(section, format=lzma.FORMAT_XZ) == content
    else:
        assert section == content
    back = container.from_bytes(build_layout(layout))
    assert back.files == {"tokenizer/merges.txt": content} and set(back.state_dict()) == {"w"}


def _xz_edited(section_edit=None, size=None) -> bytes:
    layout = xz_file()
    assert layout["records"][1]["enc"] == ENC_FILE_XZ
    if section_edit is not None:
        layout["sections"][1] = section_edit(layout["sections"][1])
        layout["records"][1]["size"] = len(layout["sections"][1])
    if size is not None:
        layout["records"][1]["dims"] = [size]
    return build_layout(layout)


def _flip(offset):
    def edit(section):
        out = bytearray(section)
        out[offset % len(out)] ^= 0x10
        return bytes(out)

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _flip(0),  # the stream header's magic
        _flip(7),  # the check type
        _flip(14),  # the block header
        _flip(40),  # the compressed data
        _flip(-9),  # the index
        _flip(-1),  # the footer's magic
        lambda s: s[:-1],
        lambda s: s[:-12],  # the footer gone
        lambda s: s[: len(s) // 2],
        lambda s: s[:12],  # the stream header alone
        lambda s: s + b"\x00\x00\x00\x00",  # stream padding: not one stream exactly
        lambda s: s + b"x",
        lambda s: s + s,  # two streams
        lambda s: s + lzma.compress(b"", format=lzma.FORMAT_XZ),
        lambda s: lzma.compress(TEXT, format=lzma.FORMAT_ALONE),  # .lzma, not .xz
        lambda s: lzma.compress(TEXT, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]),
        lambda s: TEXT,  # the plain bytes under encoding 4
    ],
    ids=["magic", "check-type", "block-header", "data", "index", "footer", "cut-1", "cut-footer", "cut-half",
         "header-only", "stream-padding", "trailing-byte", "two-streams", "trailing-empty-stream", "lzma-alone",
         "raw-lzma2", "plain"],
)  # fmt: skip
def test_damaged_xz_sections_are_rejected(edit):
    assert_rejected(_xz_edited(edit), "tokenizer/merges.txt", "xz section")


@pytest.mark.parametrize("size", [0, 1, len(TEXT) - 1, len(TEXT) + 1, 1 << 31])
def test_xz_section_of_another_decoded_size_is_rejected(size):
    assert_rejected(_xz_edited(size=size), "tokenizer/merges.txt", f"does not decode to exactly {size} bytes")


def test_an_xz_file_of_no_bytes_is_valid():
    # The writer stores an empty file plain, but an xz stream of nothing is a valid section.
    data = _xz_edited(lambda s: lzma.compress(b"", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32), size=0)
    assert container.from_bytes(data).files["tokenizer/merges.txt"] == b""


@pytest.mark.parametrize("check", [lzma.CHECK_NONE, lzma.CHECK_CRC64, lzma.CHECK_SHA256])
def test_xz_sections_with_other_integrity_checks_are_read(check):
    # The writer uses CRC-32; the section's own crc32 covers the bytes either way.
    data = _xz_edited(lambda s: lzma.compress(TEXT, format=lzma.FORMAT_XZ, check=check))
    assert container.from_bytes(data).files["tokenizer/merges.txt"] == TEXT


def test_xz_section_decoding_to_far_more_is_refused_without_decoding_it():
    # 64 MiB of zeros in a few KB of xz, declared as 1000 bytes: the reader asks the
    # decompressor for 1001 bytes at most, so it never holds the 64 MiB.
    bomb = lzma.compress(bytes(64 << 20), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=0)
    assert len(bomb) < 64 << 10
    data = _xz_edited(lambda s: bomb, size=1000)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="does not decode to exactly 1000 bytes"):
            container.from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_the_decoded_size_limit_counts_an_xz_file_by_its_decoded_size():
    data = _xz_edited()
    layout = parse_layout(data)
    section = layout["sections"][1]
    total = 8 + len(TEXT)  # the tensor w, then the file
    assert len(section) < len(TEXT)
    container.from_bytes(data, max_decoded_size=total)
    with pytest.raises(FormatError, match="merges.txt.*decoded-size limit"):
        container.from_bytes(data, max_decoded_size=total - 1)


@pytest.mark.parametrize(
    "field, value, words",
    [("dtype", 1, "uint8"), ("dims", [len(TEXT), 1], "uint8"), ("dims", [], "uint8"), ("name", b"../x", "relative path")],
)
def test_xz_file_record_fields_are_checked(field, value, words):
    layout = xz_file()
    record = layout["records"][1]
    record[field] = value
    if field == "dims":
        record["ndim"] = len(value)
    assert_rejected(build_layout(layout), None, words)


def test_xz_file_record_with_an_empty_section_is_rejected():
    layout = xz_file()
    layout["sections"][1] = b""
    layout["records"][1]["size"] = 0
    assert_rejected(build_layout(layout), "tokenizer/merges.txt", "xz file record")


def test_encoding_4_is_unknown_before_version_3():
    layout = xz_file()
    layout["version"] = 2
    layout["records"][0]["params"] = None  # w is raw: nothing else to re-lay out
    assert_rejected(build_layout(layout), "tokenizer/merges.txt", "unknown encoding 4")


def test_an_alias_of_an_xz_file_is_rejected():
    layout = xz_file()
    alias = {"name": b"v", "dtype": 9, "ndim": 1, "dims": [len(TEXT)], "enc": ENC_ALIAS, "size": 20, "crc": 0, "params": None}
    layout["records"].append(alias)
    layout["sections"].append(b"tokenizer/merges.txt")
    assert_rejected(build_layout(layout), "'v'", "not a stored tensor")


XZ_DICTIONARY = textwrap.dedent(
    """
    import lzma, resource, struct, sys, zlib
    from deepzip import container
    from deepzip.errors import FormatError

    data = bytearray(open(sys.argv[1], "rb").read())
    # The address space this process has now, and 1 GiB more: no room for a 4 GiB dictionary.
    vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize"))
    limit = vm * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        container.from_bytes(bytes(data))
    except FormatError as error:
        print("FormatError", error)
    """
)


def _with_xz_dictionary(section: bytes, dict_byte: int) -> bytes:
    """`section` (one xz stream of one block, LZMA2) with the block header's LZMA2
    dictionary-size property set to `dict_byte` and the block header crc32 fixed.
    Byte 40 declares a dictionary of 4 GiB - 1."""
    size = (section[12] + 1) * 4
    block = bytearray(section[12 : 12 + size])
    at = block.index(0x21, 2) + 2  # filter flags: id 0x21 (LZMA2), 1 property byte, then it
    block[at] = dict_byte
    block[-4:] = struct.pack("<I", zlib.crc32(bytes(block[:-4])))
    return section[:12] + bytes(block) + section[12 + size :]


def test_xz_section_with_a_small_dictionary_property_decodes():
    # The LZMA2 dictionary size lies in the block header, inside the checked section;
    # one smaller than the writer's (64 MiB) still decodes this small file.
    data = _xz_edited(lambda s: _with_xz_dictionary(s, 18))
    assert container.from_bytes(data).files["tokenizer/merges.txt"] == TEXT


def test_xz_section_declaring_a_huge_dictionary_is_a_format_error(tmp_path):
    path = tmp_path / "dictionary.dzip"
    path.write_bytes(_xz_edited(lambda s: _with_xz_dictionary(s, 40)))
    done = subprocess.run([sys.executable, "-c", XZ_DICTIONARY, str(path)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.startswith("FormatError"), done.stderr[-2000:]


# ---------------------------------------------------------------- float16 codebooks and scales


@pytest.mark.parametrize(
    "codebook, stored_f16",
    [
        ([-1.0, 0.5, 65504.0, 2.0**-24, -0.0], True),  # every one a float16 (max, least subnormal, -0)
        ([-1.0, 0.1], False),  # 0.1 is no float16
        ([1.0, 65520.0], False),  # beyond float16's range
        ([1.0, float("inf")], False),  # not finite: stored as float32
        ([1.0, float("nan")], False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_codebook_entries_are_float16_when_exactly_float16(codebook, stored_f16, dtype):
    codebook = np.array(codebook, np.float32)
    k = len(codebook)
    positions = np.array([0, 2, 3, 7, 9], np.int64)[:k]
    codes = np.arange(k, dtype=np.uint16)
    record = CodebookTensor((2, 5), dtype, codebook, positions, codes, None)
    layout = file_of(w=record)
    r, section = layout["records"][0], layout["sections"][0]
    assert bool(r["params"]["flags"] & CODEBOOK_F16) == stored_f16
    stored = split_section(3, r, section)["codebook"]
    assert stored == codebook.astype("<f2" if stored_f16 else "<f4").tobytes()
    out = container.from_bytes(build_layout(layout)).state_dict()["w"]
    expected = scaled_reference((2, 5), dtype, np.frombuffer(stored, "<f2" if stored_f16 else "<f4"), positions, codes)
    # A NaN converts to a NaN of the dtype; which NaN is the conversion's (torch gives
    # bfloat16 0xFFFF), so NaNs are compared as NaNs and every other value bit for bit.
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(out), nan) and bits_equal(out[~nan], expected[~nan])


SCALED_CASES = [
    # shape, axis, density, dtype, scales exactly float16
    ((6, 5), 0, 1.0, torch.float32, False),
    ((6, 5), 1, 1.0, torch.float16, True),
    ((3, 4, 5), 1, 0.5, torch.bfloat16, False),
    ((3, 4, 5), 2, 0.3, torch.float64, True),
    ((2, 3, 2, 2), 3, 0.7, torch.float16, False),
    ((7,), 0, 0.4, torch.float32, True),
]


@pytest.mark.parametrize("shape, axis, density, dtype, f16", SCALED_CASES)
def test_scaled_records_decode_to_the_formula(shape, axis, density, dtype, f16):
    rng = np.random.default_rng(len(shape) * 10 + axis)
    numel = int(np.prod(shape))
    positions = None if density == 1.0 else np.flatnonzero(rng.random(numel) < density).astype(np.int64)
    count = numel if positions is None else positions.size
    codebook = (rng.normal(size=5) * 7).astype(np.float32)
    scale = rng.normal(size=shape[axis]) * 3
    scale = (scale.astype(np.float16) if f16 else scale).astype(np.float32)
    scale[0] = -abs(scale[0])  # unkept positions of this slice decode to -0.0
    codes = rng.integers(0, 5, count).astype(np.uint16)
    record = CodebookTensor(shape, dtype, codebook, positions, codes, None, scale=scale, scale_axis=axis)
    layout = file_of(w=record)
    r, section = layout["records"][0], layout["sections"][0]
    assert r["params"]["axis"] == axis + 1 and bool(r["params"]["flags"] & SCALE_F16) == f16
    assert split_section(3, r, section)["scales"] == scale.astype("<f2" if f16 else "<f4").tobytes()
    back = container.from_bytes(build_layout(layout))
    got = back.state_dict()["w"]
    expected = scaled_reference(shape, dtype, codebook, positions, codes, scale, axis)
    assert bits_equal(got, expected)
    decoded = back.tensors["w"]
    assert decoded.scale_axis == axis and decoded.scale.tobytes() == scale.tobytes()


@pytest.mark.parametrize("dtype, mantissa", [(torch.bfloat16, 8), (torch.float16, 11)])
def test_the_product_is_rounded_to_float32_before_the_dtype(dtype, mantissa):
    # codebook c = 1 + 2^-m - 2^-23, scale s = 1 + 2^-23: c * s = 1 + 2^-m + 2^-31 - 2^-46
    # exactly. In float32 that is 1 + 2^-m, a tie halfway between two values of the dtype,
    # so the dtype's even neighbour, 1.0. Rounding the exact product once would give the
    # upper neighbour 1 + 2^(1-m): the spec's double rounding is what a reader must do.
    c, s = np.float32(1 + 2.0**-mantissa - 2.0**-23), np.float32(1 + 2.0**-23)
    assert float(c) * float(s) > 1 + 2.0**-mantissa and np.float32(c * s) == np.float32(1 + 2.0**-mantissa)
    record = CodebookTensor((2,), dtype, np.array([c], np.float32), None, np.zeros(2, np.uint8),
                            scale=np.array([s, 1.0], np.float32), scale_axis=0)  # fmt: skip
    out = container.from_bytes(container.to_bytes(CompressedModel({"w": record}))).state_dict()["w"]
    assert out[0].item() == 1.0 and out[0].item() != 1 + 2.0 ** (1 - mantissa)
    assert bits_equal(out, scaled_reference((2,), dtype, [c], None, [0, 0], [s, 1.0], 0))


def test_a_float64_tensor_gets_the_float32_product():
    c, s = np.float32(1 + 2.0**-8 - 2.0**-23), np.float32(1 + 2.0**-23)
    record = CodebookTensor((1,), torch.float64, np.array([c], np.float32), None, np.zeros(1, np.uint8),
                            scale=np.array([s], np.float32), scale_axis=0)  # fmt: skip
    out = container.from_bytes(container.to_bytes(CompressedModel({"w": record}))).state_dict()["w"]
    assert out.item() == float(np.float32(c * s)) == 1 + 2.0**-8 != float(c) * float(s)


def test_unkept_weights_of_a_scaled_record_are_zero_times_the_scale():
    # Values before scaling are 0 at every unkept position (and filler); the product with
    # the slice's scale keeps IEEE's rules: -0.0 for a negative scale, NaN for an
    # infinite one (a NaN scale or codebook entry makes NaN too).
    record = CodebookTensor((3, 2), torch.float32, np.array([2.0], np.float32), np.array([0]), np.zeros(1, np.uint16), None,
                            scale=np.array([1.0, -1.0, np.inf], np.float32), scale_axis=0)  # fmt: skip
    data = container.to_bytes(CompressedModel({"w": record}))
    assert not parse_layout(data)["records"][0]["params"]["flags"] & SCALE_F16  # inf: float32 scales
    out = container.from_bytes(data).state_dict()["w"]
    assert out[0].tolist() == [2.0, 0.0] and not torch.signbit(out[0, 1])
    assert torch.signbit(out[1]).all() and out[1].tolist() == [0.0, 0.0]
    assert torch.isnan(out[2]).all()


def hand_scaled_file(sparse: bool) -> bytes:
    """One version-3 record, every byte from the spec: "w", float32, shape [2, 3],
    codebook float16 [1.5, -2.0] (3E00, C000), scales along dim 1, float16 [2.0, 0.5,
    -1.0] (4000, 3800, BC00): flags 0x0C, scale axis 2.

    dense (b = 0): codes 0 1 1 0 0 1; Huffman table of k + 1 = 3 symbols, lengths 1 1 0
    -> 0x11 0x00; codes '0' '1': 011001 + pad -> 0x64. E = K = 6, C = 1, G = 0, TC = 2, TG = 0.
    sparse (b = 2): entries at 1 (code 0) and 5 (code 1): gaps 2, 4 -> symbols 1, 3; the
    end, 6, is 1 past 5. Code symbols 0 1: table 0x11 0x00, stream '01' -> 0x40; gap
    symbols 1 3: lengths 0 1 0 1 -> 0x01 0x01, codes '0' '1' -> 0x40. E = K = 2, C = G = 1,
    TC = TG = 2.
    """
    codebook, scales = bytes.fromhex("003e" "00c0"), bytes.fromhex("0040" "0038" "00bc")
    if sparse:
        section = codebook + scales + bytes([0x11, 0x00, 0x01, 0x01, 0x40, 0x40])
        params = struct.pack("<HBBB", 2, 2, 0x0C, 2) + bytes([2, 2, 1, 1, 2, 2])
    else:
        section = codebook + scales + bytes([0x11, 0x00, 0x64])
        params = struct.pack("<HBBB", 2, 0, 0x0C, 2) + bytes([6, 6, 1, 0, 2, 0])
    body = (
        bytes([1]) + struct.pack("<H", 1) + b"w" + bytes([1, 2]) + struct.pack("<II", 2, 3)
        + bytes([1, len(section)]) + struct.pack("<I", zlib.crc32(section)) + params
    )  # fmt: skip
    return seal(3, body, [section])


def test_hand_built_scaled_float16_records_decode_to_hand_computed_values():
    # value = codebook[c] * scale[p mod 3]:
    # dense: 1.5 * 2, -2 * 0.5, -2 * -1 | 1.5 * 2, 1.5 * 0.5, -2 * -1
    dense = container.from_bytes(hand_scaled_file(False)).state_dict()["w"]
    assert bits_equal(dense, torch.tensor([[3.0, -1.0, 2.0], [3.0, 0.75, 2.0]]))
    # sparse: 1.5 * 0.5 at 1, -2 * -1 at 5; the unkept 0 * scale: 0, 0, -0.0 in column 2
    sparse = container.from_bytes(hand_scaled_file(True)).state_dict()["w"]
    assert bits_equal(sparse, torch.tensor([[0.0, 0.75, -0.0], [0.0, 0.0, 2.0]]))
    assert container.from_bytes(hand_scaled_file(True)).tensors["w"].scale.tolist() == [2.0, 0.5, -1.0]


def test_a_scaled_record_with_an_alias():
    record = CodebookTensor((4, 3), torch.float16, np.array([1.0, -3.0], np.float32), None, np.arange(12, dtype=np.uint8) % 2,
                            scale=np.array([1.0, 2.0, 0.25], np.float32), scale_axis=1)  # fmt: skip
    data = container.to_bytes(CompressedModel({"a.weight": record, "b.weight": record}))
    assert [r["enc"] for r in parse_layout(data)["records"]] == [ENC_CODEBOOK, ENC_ALIAS]
    state = container.from_bytes(data).state_dict()
    assert state["a.weight"] is state["b.weight"]
    assert bits_equal(state["b.weight"], scaled_reference((4, 3), torch.float16, [1.0, -3.0], None, np.arange(12) % 2, [1.0, 2.0, 0.25], 1))


def test_zero_size_scaled_record():
    record = CodebookTensor((0, 3), torch.float32, np.array([1.0], np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16), None,
                            scale=np.zeros(0, np.float32), scale_axis=0)  # fmt: skip
    data = container.to_bytes(CompressedModel({"w": record}))
    assert parse_layout(data)["records"][0]["params"]["axis"] == 1
    assert container.from_bytes(data).state_dict()["w"].shape == (0, 3)


@pytest.mark.parametrize("version", [3, 4])
def test_versions_3_and_4_are_framed_as_version_2(version):
    # The framing is version 2's: the first section right after the preamble, the header
    # body before the 8-byte trailer.
    data = encode(CompressedModel({"w": skewed_dense()}), version)
    assert data[:8] == MAGIC and struct.unpack_from("<HHI", data, 8) == (version, 0, 0)
    layout = parse_layout(data)
    assert data[16 : 16 + layout["records"][0]["size"]] == layout["sections"][0]
    assert layout["records"][0]["enc"] == ENC_CODEBOOK
