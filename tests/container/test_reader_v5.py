"""What version 5 of the .dzip format adds, written and read: byte-plane coded raw tensors
and codebook entries (docs/FORMAT.md, "Byte planes (version 5)"), and what a reader must
reject of them. Crafted files start from the hand-derived file of test_fileformat.py."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from layout import (
    CODEBOOK_PLANES,
    ENC_PLANES,
    PLANE_RANS,
    PLANE_STORED,
    assert_rejected,
    bits_equal,
    build_layout,
    encode,
    parse_layout,
    varint,
)
from test_fileformat import expected_planes_bytes

from deepzip import container
from deepzip.codec.streams import HUFFMAN
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor


def narrow_model() -> CompressedModel:
    rng = np.random.default_rng(5)
    positions = np.arange(0, 2000, 5, dtype=np.int64)
    return CompressedModel(
        {
            "fc.bias": RawTensor(torch.from_numpy(rng.uniform(0.01, 0.2, 300).astype(np.float32))),
            "fc.weight": CodebookTensor(
                (40, 50), torch.float32, np.sort(rng.uniform(-0.1, 0.1, 60)).astype(np.float32),
                positions, rng.integers(0, 60, positions.size).astype(np.uint16),
            ),
            "steps": RawTensor(torch.arange(64, dtype=torch.int64)),
        }
    )  # fmt: skip


def test_written_byte_planes_round_trip_and_are_smaller_than_version_4():
    model = narrow_model()
    data = container.to_bytes(model)
    layout = parse_layout(data)
    records = {r["name"].decode(): r for r in layout["records"]}
    assert records["fc.bias"]["enc"] == ENC_PLANES and records["steps"]["enc"] == ENC_PLANES
    assert records["fc.weight"]["params"]["flags"] & CODEBOOK_PLANES
    assert len(data) < len(encode(model, 4))
    back = container.from_bytes(data)
    for name, record in model.tensors.items():
        assert bits_equal(back.tensors[name].to_dense(), record.to_dense()), name
    assert back.tensors["fc.weight"].codebook.tobytes() == model.tensors["fc.weight"].codebook.tobytes()


def test_huffman_only_records_code_their_planes_with_huffman():
    # The paper's coding (coders=(HUFFMAN,)) reaches the byte planes too.
    model = narrow_model()
    only = CompressedModel({n: RawTensor(r.tensor, (HUFFMAN,)) if isinstance(r, RawTensor) else r for n, r in model.tensors.items()})
    for record in parse_layout(container.to_bytes(only))["records"]:
        if record["enc"] == ENC_PLANES:
            assert all(mode != PLANE_RANS for mode, _, _ in record["planes"]), record["name"]


def _planes_file(planes: bytes, section: bytes, dtype: int = 1, size: int | None = None) -> bytes:
    """A version-5 file of one encoding-5 record, fc.bias of shape [2], built from its parts (crcs valid)."""
    record = struct.pack("<H", 7) + b"fc.bias" + bytes([dtype, 1]) + struct.pack("<I", 2)
    record += bytes([ENC_PLANES]) + varint(len(section) if size is None else size) + struct.pack("<I", zlib.crc32(section))
    preamble, body = expected_planes_bytes()[:16], bytes([0x01]) + record + planes
    return preamble + section + body + struct.pack("<II", len(body), zlib.crc32(preamble + body))


FIELDS = bytes([0, 0, 0, 1, 0x80, 0x01, 0x01])  # planes 0-2 stored, plane 3 Huffman: T = 128, D = 1
TABLE = bytes(31) + b"\x01" + bytes(64) + b"\x10" + bytes(31)  # symbols 0x3F and 0xC0 of length 1
SECTION = bytes.fromhex("0000" "0000" "c000") + TABLE + b"\x40"


def test_the_parts_rebuild_the_hand_made_file():
    assert _planes_file(FIELDS, SECTION) == expected_planes_bytes()


@pytest.mark.parametrize(
    "fields, section, options, words",
    [
        (FIELDS[:3] + b"\x04", SECTION[:6] + b"\x00\x00", {}, "unknown mode 4"),
        (FIELDS[:4] + b"\x7f\x01", SECTION[:6] + TABLE[:127] + b"\x40", {}, "Huffman table"),
        (b"\x01\x80\x01\x00" + FIELDS[:3], TABLE + bytes(6) + b"\x00\x00", {}, "Huffman stream"),
        (FIELDS, SECTION, {"size": len(SECTION) + 1}, "sum of its byte planes"),
        (FIELDS, SECTION, {"dtype": 9}, "2 bytes or more"),
        (FIELDS, SECTION[:-1] + b"\x60", {}, "fc.bias"),  # a third bit: nonzero Huffman padding
    ],
    ids=["mode", "table size", "huffman bound", "section size", "dtype", "stream"],
)
def test_damaged_byte_planes_are_rejected(fields, section, options, words):
    assert_rejected(_planes_file(fields, section, **options), "fc.bias", match=words)


def test_codebook_planes_are_unknown_to_version_4():
    layout = parse_layout(encode(narrow_model(), 5))
    assert any(r["params"] and r["params"]["flags"] & CODEBOOK_PLANES for r in layout["records"])
    layout["version"] = 4
    with pytest.raises(Exception, match="unknown coding flags|unknown encoding"):
        container.from_bytes(build_layout(layout))


LISTED_FIELDS = bytes([0, 0, 0, 3, 4, 1])  # plane 3 Huffman with a listed table: T = 4, D = 1
LISTED_TABLE = bytes([0x01, 0x3F, 0xC0, 0x11])  # two used values, 0x3F and 0xC0, both of length 1


def test_a_listed_huffman_table_decodes_by_hand():
    # The same plane as the full-table file: codes 0x3F -> 0, 0xC0 -> 1, stream 0x40.
    data = _planes_file(LISTED_FIELDS, SECTION[:6] + LISTED_TABLE + b"\x40")
    assert bits_equal(container.from_bytes(data).state_dict()["fc.bias"], torch.tensor([1.5, -2.0]))


@pytest.mark.parametrize(
    "table, words",
    [
        (bytes([0x01, 0xC0, 0x3F, 0x11]), "increasing"),
        (bytes([0x01, 0x3F, 0xC0, 0x10]), "length 0"),
        (bytes([0x02, 0x3F, 0xC0, 0x11]), "listed code-length table"),
    ],
    ids=["order", "zero length", "count"],
)
def test_damaged_listed_tables_are_rejected(table, words):
    assert_rejected(_planes_file(LISTED_FIELDS, SECTION[:6] + table + b"\x40"), "fc.bias", match=words)


def test_every_plane_stored_is_valid_too():
    # The writer never writes it (it is larger than raw), but it is a valid file.
    data = _planes_file(bytes(4), bytes.fromhex("0000" "0000" "c000" "3fc0"))
    assert bits_equal(container.from_bytes(data).state_dict()["fc.bias"], torch.tensor([1.5, -2.0]))
    assert [m for m, _, _ in parse_layout(data)["records"][0]["planes"]] == [PLANE_STORED] * 4


def test_the_byte_planes_benchmark_counts_what_version_4_would_hold():
    # benchmarks/byte_planes.py reads only the header: its plain total is the v4 file's size.
    import byte_planes

    data = (Path(__file__).parent / "golden" / "v5.dzip").read_bytes()
    raw, entries, count = byte_planes.savings(data)
    assert count == 6 and raw > 0 and entries > 0
    assert len(data) + raw + entries == len(encode(container.from_bytes(data), 4))
