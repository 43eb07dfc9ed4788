"""What version 6 of the .dzip format adds, written and read: compact Huffman tables
(docs/FORMAT.md, "Compact Huffman tables (version 6)", coding flag bits 6 and 7), and
what a reader must reject of them.

The compact tables the writer writes are read by a decoder written from docs/FORMAT.md
alone (plain '0'/'1' strings; tests/codec/test_compact_lengths.py has a fuller one and
the codec's own tests), and their lengths compared with the Huffman lengths of the
symbols the spec says the record codes. Crafted files are the writer's, edited at the
spec level (`layout`) and re-sealed with valid crcs; where a rule can be broken alone,
the same edit without the broken rule is checked to decode, so only that rule fails.
"""

import numpy as np
import pytest
import torch
from layout import (
    CODE_COMPACT,
    CODE_RANS,
    GAP_COMPACT,
    GAP_RANS,
    SIGNIFICANCE,
    assert_rejected,
    bits_equal,
    build_layout,
    encode,
    huffman_table_sizes,
    parse_layout,
    relative_symbols,
    split_section,
)

from deepzip import container
from deepzip.codec.streams import ANS, HUFFMAN, encode_stream, huffman_lengths, huffman_table_lengths
from deepzip.compressed import CodebookTensor, CompressedModel

PARTS = ("codebook", "scales", "code_table", "gap_table", "code_stream", "gap_stream")
EXAMPLE = bytes.fromhex("c408000000002b0c40")  # FORMAT.md's example: b = 6, lengths [2, 2, 2, 2] + [0] * 60

# ---------------------------------------------------------------- the compact form, from FORMAT.md

ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
RUN = {16: (2, 3), 17: (3, 3), 18: (7, 11)}  # run symbol -> (extra bits, run of extra 0)


def canonical(lengths) -> dict[int, str]:
    """{symbol: code word}: used symbols by (length, symbol), first all zeros, next (prev + 1) << diff."""
    codes, code, previous = {}, 0, None
    for n, s in sorted((int(n), s) for s, n in enumerate(lengths) if n):
        code = 0 if previous is None else (code + 1) << (n - previous)
        codes[s], previous = format(code, f"0{n}b"), n
    return codes


def spec_decode(data: bytes, alphabet: int) -> tuple[list[int], list[tuple[int, int]], int]:
    """(the code lengths, the (length-code symbol, extra) pairs, the bits before the padding)
    of a valid compact table; asserts every rule of FORMAT.md."""
    bits, pos = "".join(f"{byte:08b}" for byte in data), 0

    def take(width):
        nonlocal pos
        assert pos + width <= len(bits), "ends early"
        pos += width
        return int(bits[pos - width : pos], 2) if width else 0

    given = take(4) + 4
    length_code = [0] * 19
    for s in ORDER[:given]:
        length_code[s] = take(3)
    assert any(length_code) and sum(2 ** (7 - n) for n in length_code if n) <= 2**7
    words = {w: s for s, w in canonical(length_code).items()}
    lengths, symbols = [], []
    while len(lengths) < alphabet:
        word = ""
        while word not in words:
            assert len(word) < 7, "no code word"
            word += str(take(1))
        s = words[word]
        extra = take(RUN[s][0]) if s in RUN else 0
        symbols.append((s, extra))
        if s < 16:
            lengths.append(s)
            continue
        assert s != 16 or lengths, "16 first"
        run = RUN[s][1] + extra
        assert len(lengths) + run <= alphabet, "run past the end"
        lengths += [lengths[-1] if s == 16 else 0] * run
    assert len(bits) - pos < 8 and "1" not in bits[pos:], "trailing bytes or padding"
    return lengths, symbols, pos


def spec_table(length_code: dict[int, int], symbols: list[tuple[int, int]], given: int = 19) -> bytes:
    """A compact table's bytes from length-code lengths {symbol: length} and (symbol, extra) pairs."""
    full = [length_code.get(s, 0) for s in range(19)]
    codes = canonical(full)
    bits = format(given - 4, "04b") + "".join(format(full[s], "03b") for s in ORDER[:given])
    for s, extra in symbols:
        bits += codes[s] + (format(extra, f"0{RUN[s][0]}b") if s in RUN else "")
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def inflated_table(lengths: list[int], symbols: list[tuple[int, int]], size: int) -> bytes:
    """A valid compact table of exactly `size` bytes for `lengths`: `symbols` under a
    5-bit length code for all 19 symbols, with lengths peeled off the front of the runs,
    one at a time (each step costs at most 8 bits, so every size is reached)."""
    five = dict.fromkeys(range(19), 5)  # Kraft: 19/32
    symbols, done = list(symbols), 0  # symbols[:done] are literals
    while True:
        table = spec_table(five, symbols)
        if len(table) >= size:
            assert len(table) == size
            return table
        while symbols[done][0] < 16:
            done += 1
        s, extra = symbols[done]
        at = sum(1 if t < 16 else RUN[t][1] + e for t, e in symbols[:done])  # lengths before the run
        value, rest = lengths[at], RUN[s][1] + extra - 1
        tail = [(value, 0)] * rest
        if s == 16 and rest >= 3:
            tail = [(16, rest - 3)]
        elif s != 16 and rest >= 11:
            tail = [(18, rest - 11)]
        elif s != 16 and rest >= 3:
            tail = [(17, rest - 3)]
        symbols[done : done + 1] = [(value, 0), *tail]


# ---------------------------------------------------------------- models


def pruned(seed: int, density: float, skew: float, k: int = 120, shape=(64, 300), coders=(HUFFMAN,)) -> CodebookTensor:
    """Sparse random positions, codes drawn with probability ~ skew**c (the first entries common)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    positions = np.sort(rng.choice(n, int(n * density), replace=False)).astype(np.int64)
    p = skew ** np.arange(k)
    codes = rng.choice(k, positions.size, p=p / p.sum()).astype(np.uint16)
    codebook = np.sort(rng.normal(size=k)).astype(np.float32)
    return CodebookTensor(shape, torch.float32, codebook, positions, codes, None, coders=coders)


def two_tables() -> CompressedModel:
    # fc1: both tables compact (wide gaps, 256 symbols); fc2: dense enough that its gap
    # table (32 symbols) stays packed while its code table is compact.
    return CompressedModel({"fc1.weight": pruned(1, 0.04, 0.97), "fc2.weight": pruned(3, 0.3, 0.97)})


@pytest.fixture(scope="module")
def written() -> bytes:
    return container.to_bytes(two_tables())


def records_of(layout: dict) -> dict:
    return {r["name"].decode(): (i, r) for i, r in enumerate(layout["records"])}


def table_of(data: bytes, name: str, part: str) -> bytes:
    layout = parse_layout(data)
    i, r = records_of(layout)[name]
    return split_section(6, r, layout["sections"][i])[part]


def rebuilt(data: bytes, name: str, parts: dict | None = None, **params) -> bytes:
    """`data` with record `name`'s section parts and coding parameters replaced; C, G, TC,
    TG and the section size follow the parts, crcs are recomputed."""
    layout = parse_layout(data)
    i, r = records_of(layout)[name]
    old = split_section(6, r, layout["sections"][i])
    new = {**old, **(parts or {})}
    sizes = {"TC": "code_table", "TG": "gap_table", "C": "code_stream", "G": "gap_stream"}
    r["params"] = {**r["params"], **{f: len(new[p]) for f, p in sizes.items()}, **params}
    layout["sections"][i] = b"".join(new[p] for p in PARTS)
    r["size"] = len(layout["sections"][i])
    return build_layout(layout)


def assert_decodes_to(data: bytes, model: CompressedModel) -> None:
    back = container.from_bytes(data)
    assert set(back.tensors) == set(model.tensors)
    for name, record in model.tensors.items():
        assert bits_equal(back.tensors[name].to_dense(), record.to_dense()), name


# ---------------------------------------------------------------- written and read


def test_the_writer_writes_compact_tables_that_the_spec_reads(written):
    model = two_tables()
    layout = parse_layout(written)
    assert layout["version"] == 6
    seen = 0
    for i, r in enumerate(layout["records"]):
        p, record = r["params"], model.tensors[r["name"].decode()]
        parts = split_section(6, r, layout["sections"][i])
        assert not p["flags"] & (CODE_RANS | GAP_RANS | SIGNIFICANCE) and p["b"] > 0
        gaps, codes = relative_symbols(record.positions, record.codes, record.numel, p["b"], p["k"])
        packed_code, packed_gap = huffman_table_sizes(p["k"], p["b"])
        for flag, table, alphabet, packed, symbols in (
            (CODE_COMPACT, parts["code_table"], p["k"] + 1, packed_code, codes),
            (GAP_COMPACT, parts["gap_table"], 1 << p["b"], packed_gap, gaps),
        ):
            expected = huffman_lengths(np.bincount(symbols, minlength=alphabet)).tolist()
            assert huffman_table_lengths(table, alphabet).tolist() == expected
            if p["flags"] & flag:
                seen |= flag
                assert 3 <= len(table) < packed
                assert spec_decode(table, alphabet)[0] == expected
            else:
                assert len(table) == packed
                nibbles = [n for byte in table for n in (byte >> 4, byte & 15)][:alphabet]
                assert nibbles == expected
    assert seen == CODE_COMPACT | GAP_COMPACT
    flags = {name: r["params"]["flags"] & (CODE_COMPACT | GAP_COMPACT) for name, (_, r) in records_of(layout).items()}
    assert flags == {"fc1.weight": CODE_COMPACT | GAP_COMPACT, "fc2.weight": CODE_COMPACT}
    assert_decodes_to(written, model)
    assert len(written) < len(encode(model, 5))


def test_the_format_example_is_what_the_writer_writes_and_decodes():
    # b = 6 and gaps 1..4, each as often: the gap lengths are [2, 2, 2, 2] + [0] * 60.
    rng = np.random.default_rng(7)
    gaps = np.tile([1, 2, 3, 4], 100)
    rng.shuffle(gaps)
    positions = np.cumsum(gaps) - 1
    codes = rng.integers(0, 4, positions.size).astype(np.uint16)
    record = CodebookTensor((1, 1000), torch.float32, np.array([-1, -0.5, 0.5, 1], np.float32), positions, codes, 6, coders=(HUFFMAN,))
    model = CompressedModel({"fc.weight": record})
    data = container.to_bytes(model)
    layout = parse_layout(data)
    r = layout["records"][0]
    assert r["params"]["b"] == 6 and r["params"]["flags"] & GAP_COMPACT
    table = split_section(6, r, layout["sections"][0])["gap_table"]
    assert table == EXAMPLE
    assert spec_decode(EXAMPLE, 64) == ([2] * 4 + [0] * 60, [(2, 0), (16, 0), (18, 49)], 66)
    assert_decodes_to(data, model)


def test_compact_flags_are_unknown_to_version_5(written):
    layout = parse_layout(written)
    layout["version"] = 5
    assert_rejected(build_layout(layout), "fc1.weight", match="unknown coding flags")


def test_a_version_5_file_relabelled_6_is_valid():
    model = two_tables()
    layout = parse_layout(encode(model, 5))
    assert layout["version"] == 5
    assert not any(r["params"]["flags"] & (CODE_COMPACT | GAP_COMPACT) for r in layout["records"])
    layout["version"] = 6
    assert_decodes_to(build_layout(layout), model)


def test_a_reader_accepts_a_compact_table_the_writer_would_not_write(written):
    # fc1's gap table as a valid compact table one byte smaller than the packed one.
    layout = parse_layout(written)
    i, r = records_of(layout)["fc1.weight"]
    table = split_section(6, r, layout["sections"][i])["gap_table"]
    lengths, symbols, _ = spec_decode(table, 256)
    bigger = inflated_table(lengths, symbols, 127)
    assert spec_decode(bigger, 256)[0] == lengths
    assert_decodes_to(rebuilt(written, "fc1.weight", {"gap_table": bigger}), two_tables())


# ---------------------------------------------------------------- rejected from the header


def rans_parts(record: CodebookTensor, params: dict, which: str) -> dict:
    """The record's code or gap table and stream coded again with rANS (the spec's symbols)."""
    gaps, codes = relative_symbols(record.positions, record.codes, record.numel, params["b"], params["k"])
    symbols, alphabet = (codes, params["k"] + 1) if which == "code" else (gaps, 1 << params["b"])
    stream = encode_stream(np.array(symbols), alphabet, coders=(ANS,))
    assert stream.coder == ANS
    return {f"{which}_table": stream.table, f"{which}_stream": stream.data}


@pytest.mark.parametrize("which, rans, compact", [("code", CODE_RANS, CODE_COMPACT), ("gap", GAP_RANS, GAP_COMPACT)], ids=["code", "gap"])
def test_a_compact_flag_on_a_rans_stream_is_rejected(written, which, rans, compact):
    model, layout = two_tables(), parse_layout(written)
    _, r = records_of(layout)["fc1.weight"]
    parts = rans_parts(model.tensors["fc1.weight"], r["params"], which)
    flags = r["params"]["flags"]
    assert flags & compact
    assert_decodes_to(rebuilt(written, "fc1.weight", parts, flags=(flags | rans) & ~compact), model)  # the control
    assert_rejected(rebuilt(written, "fc1.weight", parts, flags=flags | rans), "fc1.weight", match=f"the {which} stream is rANS-coded")


def test_a_gap_compact_flag_without_a_gap_table_is_rejected():
    rng = np.random.default_rng(2)
    dense = CodebookTensor((40, 50), torch.float32, np.linspace(-1, 1, 30, dtype=np.float32), None,
                           rng.choice(30, 2000, p=0.9 ** np.arange(30) / (0.9 ** np.arange(30)).sum()).astype(np.uint16))  # fmt: skip
    flagged = pruned(4, 0.3, 0.9, shape=(60, 80), coders=None)
    live = np.random.default_rng(4).random(80) < 0.2  # dead columns: significance flags pay
    keep = live[flagged.positions % 80]
    flagged = CodebookTensor(flagged.shape, flagged.dtype, flagged.codebook, flagged.positions[keep], flagged.codes[keep])
    model = CompressedModel({"dense.weight": dense, "flags.weight": flagged})
    data = container.to_bytes(model)
    assert_decodes_to(data, model)
    records = records_of(parse_layout(data))
    assert records["dense.weight"][1]["params"]["b"] == 0 and not records["dense.weight"][1]["params"]["flags"] & SIGNIFICANCE
    assert records["flags.weight"][1]["params"]["flags"] & SIGNIFICANCE
    for name in ("dense.weight", "flags.weight"):
        p = records[name][1]["params"]
        assert p["TG"] == 0
        assert_rejected(rebuilt(data, name, flags=p["flags"] | GAP_COMPACT), name, match="the gap table is 0 bytes.{0,3}compact")


def test_a_compact_table_of_two_bytes_is_rejected(written):
    _, r = records_of(parse_layout(written))["fc2.weight"]
    table = table_of(written, "fc2.weight", "code_table")
    assert r["params"]["flags"] & CODE_COMPACT and len(table) < 61
    # No valid compact table is shorter than 3 bytes (17 bits at least): the header refuses it.
    for size in (1, 2):
        data = rebuilt(written, "fc2.weight", {"code_table": table[:size]})
        assert_rejected(data, "fc2.weight", match=f"compact Huffman code table of 121 symbols is 3..60 bytes, not {size}")
    # 3 bytes pass the header, not the decoder: this table is longer.
    assert_rejected(rebuilt(written, "fc2.weight", {"code_table": table[:3]}), "fc2.weight", match="ends early")


def test_a_compact_table_as_large_as_the_packed_one_is_rejected(written):
    layout = parse_layout(written)
    i, r = records_of(layout)["fc1.weight"]
    lengths, symbols, _ = spec_decode(split_section(6, r, layout["sections"][i])["gap_table"], 256)
    table = inflated_table(lengths, symbols, 128)
    assert spec_decode(table, 256)[0] == lengths  # a valid compact table, but not smaller
    assert_rejected(rebuilt(written, "fc1.weight", {"gap_table": table}), "fc1.weight", match="is 3..127 bytes, not 128")


@pytest.mark.parametrize(
    "name, flag, words",
    [
        ("fc1.weight", GAP_COMPACT, "Huffman gap table of 256 symbols is 128 bytes, not "),
        ("fc1.weight", CODE_COMPACT, "Huffman code table of 121 symbols is 61 bytes, not "),
        ("fc2.weight", CODE_COMPACT, "Huffman code table of 121 symbols is 61 bytes, not "),
    ],
    ids=["fc1-gap", "fc1-code", "fc2-code"],
)
def test_a_compact_table_without_its_flag_is_rejected(written, name, flag, words):
    _, r = records_of(parse_layout(written))[name]
    assert r["params"]["flags"] & flag
    words += str(r["params"]["TG" if flag == GAP_COMPACT else "TC"])
    assert_rejected(rebuilt(written, name, flags=r["params"]["flags"] & ~flag), name, match=words)


def test_a_packed_table_with_a_compact_flag_is_rejected(written):
    _, r = records_of(parse_layout(written))["fc2.weight"]
    assert not r["params"]["flags"] & GAP_COMPACT and r["params"]["TG"] == 16
    assert_rejected(rebuilt(written, "fc2.weight", flags=r["params"]["flags"] | GAP_COMPACT), "fc2.weight", match="is 3..15 bytes, not 16")


# ---------------------------------------------------------------- rejected when decoded


def test_a_compact_table_with_nonzero_padding_is_rejected(written):
    hit = 0
    for name, part, alphabet in (("fc1.weight", "code_table", 121), ("fc1.weight", "gap_table", 256), ("fc2.weight", "code_table", 121)):
        table = table_of(written, name, part)
        if 8 * len(table) == spec_decode(table, alphabet)[2]:
            continue  # no padding bit to set
        hit += 1
        damaged = table[:-1] + bytes([table[-1] | 1])  # the last bit, a padding one
        with pytest.raises(AssertionError, match="padding"):
            spec_decode(damaged, alphabet)
        assert_rejected(rebuilt(written, name, {part: damaged}), name, match="nonzero padding bits")
    assert hit


def test_compact_lengths_that_break_kraft_are_rejected(written):
    # Gap lengths 1, 1, 1 and 253 unused: a valid compact table, an impossible code.
    table = spec_table({1: 1, 18: 1}, [(1, 0)] * 3 + [(18, 127), (18, 104)], given=18)
    assert spec_decode(table, 256)[0] == [1, 1, 1] + [0] * 253
    assert_rejected(rebuilt(written, "fc1.weight", {"gap_table": table}), "fc1.weight", match="Kraft")


def test_a_compact_table_that_ends_early_is_rejected(written):
    table = table_of(written, "fc1.weight", "gap_table")
    assert_rejected(rebuilt(written, "fc1.weight", {"gap_table": table[:-1]}), "fc1.weight", match="ends early")
