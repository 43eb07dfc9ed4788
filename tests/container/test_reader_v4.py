"""What version 4 of the .dzip format adds, written and read: significance-coded positions
(docs/FORMAT.md, "Significance flags (version 4)"), and what a reader must reject of them."""

import numpy as np
import pytest
import torch
from layout import (
    CODE_RANS,
    GAP_RANS,
    SIGNIFICANCE,
    assert_rejected,
    build_layout,
    encode,
    parse_layout,
    small_bytes,
    split_section,
)

from deepzip import container
from deepzip.codec import significance
from deepzip.codec.streams import HUFFMAN, encode_stream
from deepzip.compressed import CodebookTensor, CompressedModel

PARTS = ("codebook", "scales", "code_table", "gap_table", "code_stream", "gap_stream")


def dead_columns(shape=(60, 80), k=8, seed=0, dtype=torch.float32, **fields) -> CodebookTensor:
    """A pruned tensor whose columns are mostly dead: the writer codes its positions as flags."""
    rng = np.random.default_rng(seed)
    rows = shape[0]
    live = rng.random(int(np.prod(shape)) // rows) < 0.3
    positions = np.flatnonzero((rng.random((rows, live.size)) < 0.3) & live).astype(np.int64)
    codes = rng.integers(0, k, positions.size).astype(np.uint16)
    return CodebookTensor(tuple(shape), dtype, np.sort(rng.normal(size=k)).astype(np.float32), positions, codes, **fields)


def written(**records) -> dict:
    """The records as the version-4 writer wrote them (the writer's file without version 5's byte planes)."""
    layout = parse_layout(encode(CompressedModel(records), 4))
    assert layout["version"] == 4
    return layout


def test_significance_records_round_trip_in_every_float_dtype_and_with_scales():
    rng = np.random.default_rng(3)
    records = {
        "a": dead_columns(),
        "b": dead_columns((16, 5, 3, 3), k=4, seed=1, dtype=torch.float16),
        "c": dead_columns((30, 40), seed=2, dtype=torch.bfloat16, scale=np.exp(rng.normal(size=40)).astype(np.float32), scale_axis=1),
        "d": dead_columns((20, 30), seed=4, dtype=torch.float64),
    }
    layout = written(**records)
    for r in layout["records"]:
        assert r["params"]["flags"] & (SIGNIFICANCE | GAP_RANS) == SIGNIFICANCE and r["params"]["b"] == 0, r["name"]
    back = container.from_bytes(build_layout(layout))
    for name, record in records.items():
        got = back.tensors[name]
        assert got.flat_positions().tolist() == record.positions.tolist() and got.codes.tolist() == record.codes.tolist()
        assert got.index_bits is None  # a rewrite chooses again
        assert torch.equal(got.to_dense(), record.to_dense()), name


def test_a_significance_file_is_smaller_than_its_version_3_form():
    model = CompressedModel({"w": dead_columns((300, 784), seed=5)})
    assert len(container.to_bytes(model)) < 0.85 * len(encode(model, 3))


def test_huffman_only_records_keep_their_gaps():
    layout = written(w=dead_columns(coders=(HUFFMAN,)))
    assert not layout["records"][0]["params"]["flags"] & SIGNIFICANCE and layout["records"][0]["params"]["b"] > 0


def test_the_significance_flag_is_unknown_to_version_3():
    layout = written(w=dead_columns())
    layout["version"] = 3
    assert_rejected(build_layout(layout), "w", "unknown coding flags")


@pytest.mark.parametrize("bit", [0x20, 0x40, 0x80])
def test_coding_flags_above_bit_4_are_rejected(bit):
    layout = parse_layout(small_bytes(4))
    layout["records"][1]["params"]["flags"] |= bit
    assert_rejected(build_layout(layout), "fc.weight", "unknown coding flags")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: p.update(b=3), "no index bits"),
        (lambda p: p.update(flags=p["flags"] | GAP_RANS), "no index bits"),
        (lambda p: p.update(E=p["E"] + 1), "entries"),
        (lambda p: p.update(K=p["K"] - 1, E=p["E"] - 1), "flags|trailing"),  # whichever stream is decoded first
        (lambda p: p.update(K=p["K"] + 1, E=p["E"] + 1), "flags"),
    ],
)
def test_inconsistent_significance_records_are_rejected(edit, match):
    layout = written(w=dead_columns())
    edit(layout["records"][0]["params"])
    assert_rejected(build_layout(layout), "w", match)


def test_a_gap_table_beside_significance_flags_is_rejected():
    layout = written(w=dead_columns())
    record = layout["records"][0]
    parts = split_section(4, record, layout["sections"][0])
    parts["gap_table"] = b"\x00\x00"
    layout["sections"][0] = b"".join(parts[p] for p in PARTS)
    record["size"], record["params"]["TG"] = len(layout["sections"][0]), 2
    assert_rejected(build_layout(layout), "w", "gap table")


def test_a_filler_code_in_a_significance_record_is_rejected():
    # The code stream holds the kept weights' codes only: the filler symbol k must not occur.
    record = dead_columns(k=2)
    layout = written(w=record)
    codes = record.codes.copy()
    codes[0] = 2  # the filler symbol of a 2-entry codebook
    stream = encode_stream(codes, 3, (HUFFMAN,))
    parts = split_section(4, layout["records"][0], layout["sections"][0])
    parts.update(code_table=stream.table, code_stream=stream.data)
    layout["sections"][0] = b"".join(parts[p] for p in PARTS)
    params = layout["records"][0]["params"]
    params.update(TC=len(stream.table), C=len(stream.data), flags=params["flags"] & ~CODE_RANS)
    layout["records"][0]["size"] = len(layout["sections"][0])
    assert_rejected(build_layout(layout), "w", "filler")


def test_another_masks_flags_decode_to_that_mask():
    # The flags are the positions: a valid stream of other flags (with their kept count) is
    # another valid file, as for any stream; the section's crc32 is what detects damage.
    layout = written(w=dead_columns())
    other = dead_columns(seed=9)
    parts = split_section(4, layout["records"][0], layout["sections"][0])
    parts["gap_stream"] = significance.encode(other.positions, (60, 80))
    codes = encode_stream(other.codes, 9, (HUFFMAN,))
    parts.update(code_table=codes.table, code_stream=codes.data)
    layout["sections"][0] = b"".join(parts[p] for p in PARTS)
    params = layout["records"][0]["params"]
    params.update(G=len(parts["gap_stream"]), TC=len(codes.table), C=len(codes.data), E=other.kept, K=other.kept)
    params["flags"] &= ~CODE_RANS
    layout["records"][0]["size"] = len(layout["sections"][0])
    back = container.from_bytes(build_layout(layout)).tensors["w"]
    assert back.flat_positions().tolist() == other.positions.tolist() and back.codes.tolist() == other.codes.tolist()
