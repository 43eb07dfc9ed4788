"""Spec-level helpers of the .dzip format tests: a strict parser and a builder for versions 1-6.

Written from the format's description (docs/FORMAT.md), not from the reader, so that
expected bytes and crafted files do not inherit the reader's mistakes. `parse_layout`
splits a well-formed file into its fields; `build_layout` writes a (possibly edited)
layout back in its version, recomputing the checksums, so that a crafted file reaches
the semantic checks behind valid crcs. `section_parts` splits a codebook section.

Version 1: preamble (magic, u16 version, u16 flags, u32 header size H), header (u32
record count, records), u32 crc32 of preamble + header, sections. Versions 2 to 4:
preamble (the u32 is reserved, 0), sections, header body (varint record count, records),
trailer (u32 body size H, u32 crc32 of preamble + body). A record: u16 name length, name,
u8 dtype, u8 ndim, u32 dims, u8 encoding, section size (u32 in v1, varint after), u32
section crc32, and for codebook records u16 k, u8 b, then E, C, G (u32, v1), E, K, C, G
(varints, v2), or u8 flags, u8 scale axis and varints E, K, C, G, TC, TG (v3 and v4: the
last two are the sizes of the code and gap tables). Version 4 is version 3 plus one coding
flag, bit 4: the gap stream holds context-coded significance flags (b = 0, E = K, TG = 0).
Version 5 adds encoding 5 (a raw tensor as byte planes: per plane u8 mode, and varints T
and D unless the mode is 0, stored) and codebook flag bit 5 (the codebook entries as byte
planes, their plane fields after TG). Version 6 adds codebook flag bits 6 and 7: the code
and the gap table, Huffman, are compact (run-length coded code lengths, DEFLATE's form).

A varint (versions 2 to 4) is unsigned LEB128: 7 bits a byte, the least significant
group first, the high bit set on every byte but the last; minimal, at most 10 bytes, < 2**64.

The writer writes version 6 only. `encode(model, 5)` is what the version-5 writer wrote: the
writer's file with every codebook record coded again with packed Huffman tables (which
may change its widths and coders too). `encode(model, 4)` is what the version-4 writer
wrote: the version-5 file with every byte-plane record stored plainly (raw bytes, plain codebook
entries). `encode(model, 3)` is what the version-3 writer wrote: the version-4 file with every significance-coded record coded as gaps, as the codec does when it
is not given the tensor's shape. `encode(model, 2)` is what the version-2 writer wrote:
the writer's records with every codebook stream Huffman-coded and every codebook float32
(no scales, no xz), laid out as version 2; `encode(model, 1)` re-lays that out as version
1, which is byte for byte what deepzip 0.1 wrote. Both are checked against hand-derived
bytes and against the committed golden files (test_fileformat.py, test_golden.py).
"""

from __future__ import annotations

import lzma
import struct
import zlib

import numpy as np
import pytest
import torch

from deepzip import container
from deepzip.codec.layer import encode_dense, encode_layer_smallest
from deepzip.codec.streams import ANS, HUFFMAN
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ChecksumError, FormatError

MAGIC = bytes([0x89, 0x44, 0x5A, 0x49, 0x50, 0x0D, 0x0A, 0x1A])
VERSIONS = (1, 2, 3, 4, 5, 6)
CURRENT = 6  # the version the writer writes
PARAMS = {
    1: ("k", "b", "E", "C", "G"),
    2: ("k", "b", "E", "K", "C", "G"),
    3: ("k", "b", "flags", "axis", "E", "K", "C", "G", "TC", "TG"),
}
PARAMS[4] = PARAMS[5] = PARAMS[6] = PARAMS[3]
PARAMS_FORMAT = {1: "<HBIII", 2: "<HB", 3: "<HBBB", 4: "<HBBB", 5: "<HBBB", 6: "<HBBB"}  # versions 2 to 6: then the varints
VARINT_PARAMS = {2: ("E", "K", "C", "G"), 3: ("E", "K", "C", "G", "TC", "TG")}
VARINT_PARAMS[4] = VARINT_PARAMS[5] = VARINT_PARAMS[6] = VARINT_PARAMS[3]
TRAILER_FORMAT = "<II"  # versions 2 to 6: body size H, crc32
TRAILER_SIZE = struct.calcsize(TRAILER_FORMAT)

# Version 3 codebook record flags (docs/FORMAT.md, "Codebook records, version 3"), and
# version 4's significance flags.
# version 4's significance flags, version 5's byte-plane coded codebook entries and
# version 6's compact Huffman tables.
CODE_RANS, GAP_RANS, CODEBOOK_F16, SCALE_F16, SIGNIFICANCE, CODEBOOK_PLANES = 1, 2, 4, 8, 16, 32
CODE_COMPACT, GAP_COMPACT = 64, 128
ENC_RAW, ENC_CODEBOOK, ENC_ALIAS, ENC_FILE, ENC_FILE_XZ, ENC_PLANES = 0, 1, 2, 3, 4, 5
PLANE_STORED, PLANE_HUFFMAN, PLANE_RANS, PLANE_LISTED = 0, 1, 2, 3
ITEMSIZE = {1: 4, 2: 2, 3: 2, 4: 8, 5: 8, 6: 4, 7: 2, 8: 1, 9: 1, 10: 1}  # by dtype code


# ---------------------------------------------------------------- varints


def varint(value: int) -> bytes:
    """`value` as a minimal unsigned LEB128 varint, written from the rule (not pack_varint)."""
    assert 0 <= value < 1 << 64
    out = []
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the strict varint at `pos`; asserts minimal, <= 10 bytes, < 2**64."""
    value, shift = 0, 0
    for i in range(10):
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            assert i == 0 or byte, "not minimal"
            assert value < 1 << 64
            return value, pos + i + 1
    raise AssertionError("varint of more than 10 bytes")


def pack_size(version: int, value: int) -> bytes:
    """A record count or section size: u32 in version 1, varint in versions 2 to 4."""
    return struct.pack("<I", value) if version == 1 else varint(value)


def read_size(version: int, data: bytes, pos: int) -> tuple[int, int]:
    if version == 1:
        return struct.unpack_from("<I", data, pos)[0], pos + 4
    return read_varint(data, pos)


def pack_params(version: int, params: dict) -> bytes:
    """A codebook record's coding parameters in `version`'s field widths."""
    if version == 1:
        return struct.pack(PARAMS_FORMAT[1], *(params[name] for name in PARAMS[1]))
    fixed = PARAMS[version][: len(PARAMS[version]) - len(VARINT_PARAMS[version])]
    head = struct.pack(PARAMS_FORMAT[version], *(params[name] for name in fixed))
    return head + b"".join(varint(params[n]) for n in VARINT_PARAMS[version])


def read_params(version: int, data: bytes, pos: int) -> tuple[dict, int]:
    """(coding parameters, position after them) of the codebook record at `pos`."""
    fmt = PARAMS_FORMAT[version]
    fixed = struct.unpack_from(fmt, data, pos)
    params, pos = dict(zip(PARAMS[version], fixed)), pos + struct.calcsize(fmt)
    for name in VARINT_PARAMS.get(version, ()):
        params[name], pos = read_varint(data, pos)
    return params, pos


def read_planes(data: bytes, pos: int, width: int) -> tuple[list[tuple[int, int, int]], int]:
    """(plane fields [(mode, T, D)], position after them): u8 mode, then varints T and D unless stored (T = D = 0 then)."""
    planes = []
    for _ in range(width):
        mode, pos = data[pos], pos + 1
        table = size = 0
        if mode != PLANE_STORED:
            table, pos = read_varint(data, pos)
            size, pos = read_varint(data, pos)
        planes.append((mode, table, size))
    return planes, pos


def pack_planes(planes: list[tuple[int, int, int]]) -> bytes:
    """Plane fields as the header holds them (see `read_planes`)."""
    return b"".join(bytes([m]) + (b"" if m == PLANE_STORED else varint(t) + varint(d)) for m, t, d in planes)


def planes_size(planes: list[tuple[int, int, int]], count: int) -> int:
    """Section bytes of byte planes of `count` values: count for a stored plane, T + D for a coded one."""
    return sum(count if m == PLANE_STORED else t + d for m, t, d in planes)


def split_planes(planes: list[tuple[int, int, int]], section: bytes, count: int) -> list[tuple[int, bytes, bytes]]:
    """[(mode, table, data)] of each plane in a byte-plane section (stored planes: no table)."""
    out, pos = [], 0
    for mode, table, size in planes:
        if mode == PLANE_STORED:
            out.append((mode, b"", section[pos : pos + count]))
            pos += count
        else:
            out.append((mode, section[pos : pos + table], section[pos + table : pos + table + size]))
            pos += table + size
    assert pos == len(section)
    return out


def unplane(planes: list[tuple[int, int, int]], section: bytes, count: int) -> bytes:
    """The `count` values' bytes, row-major, from their byte planes: plane j is byte j of each
    value (little-endian). A coded plane's stream is decoded by the codec's stream decoder
    (Huffman or rANS, checked against their own references in tests/codec)."""
    from deepzip.codec.streams import decode_stream

    columns = []
    for mode, table, data in split_planes(planes, section, count):
        if mode == PLANE_STORED:
            columns.append(np.frombuffer(data, dtype=np.uint8))
        elif mode == PLANE_LISTED:  # u8 m - 1, the m used values, their 4-bit lengths: expanded by hand
            m = table[0] + 1
            nibbles = [n for byte in table[1 + m :] for n in (byte >> 4, byte & 0x0F)][:m]
            full = [0] * 256
            for value, length in zip(table[1 : 1 + m], nibbles):
                full[value] = length
            packed = bytes((full[i] << 4) | full[i + 1] for i in range(0, 256, 2))
            columns.append(decode_stream(HUFFMAN, packed, data, 256, count).astype(np.uint8))
        else:
            columns.append(decode_stream(HUFFMAN if mode == PLANE_HUFFMAN else ANS, table, data, 256, count).astype(np.uint8))
    return np.stack(columns, axis=1).tobytes() if columns else b""


def huffman_table_sizes(k: int, b: int) -> tuple[int, int]:
    """The code and gap Huffman table sizes: ceil((k+1)/2) and ceil(2**b/2) (0 when b = 0)."""
    return (k + 2) // 2, ((1 << b) + 1) // 2 if b else 0


def section_parts(version: int, record: dict) -> list[tuple[str, int]]:
    """(part, size) of a codebook record's section, in order: codebook, scales, code_table,
    gap_table, code_stream, gap_stream (docs/FORMAT.md). Versions 1 and 2 have float32
    codebooks, no scales and Huffman tables only."""
    p = record["params"]
    flags, axis = (p["flags"], p["axis"]) if version >= 3 else (0, 0)
    tables = (p["TC"], p["TG"]) if version >= 3 else huffman_table_sizes(p["k"], p["b"])
    scales = record["dims"][axis - 1] * (2 if flags & SCALE_F16 else 4) if axis else 0
    entries = planes_size(record["planes"], p["k"]) if flags & CODEBOOK_PLANES else p["k"] * (2 if flags & CODEBOOK_F16 else 4)
    sizes = [entries, scales, *tables, p["C"], p["G"]]
    return list(zip(("codebook", "scales", "code_table", "gap_table", "code_stream", "gap_stream"), sizes))


def part_offsets(version: int, record: dict) -> dict[str, tuple[int, int]]:
    """{part: (offset in the section, size)} of a codebook record's section."""
    out, pos = {}, 0
    for name, size in section_parts(version, record):
        out[name] = (pos, size)
        pos += size
    return out


def split_section(version: int, record: dict, section: bytes) -> dict[str, bytes]:
    """A codebook section cut into its parts; asserts the parts fill it exactly."""
    parts = {name: section[offset : offset + size] for name, (offset, size) in part_offsets(version, record).items()}
    assert sum(len(p) for p in parts.values()) == len(section) == record["size"]
    return parts


# ---------------------------------------------------------------- parse and build


def parse_layout(data: bytes) -> dict:
    """Split a well-formed file of any version into preamble fields, record dicts and sections.

    {"version", "flags", "reserved" (v2 to v4), "records": [{name, dtype, ndim, dims, enc,
    size, crc, params: {k, b, (flags, axis,) E, (K,) C, G, (TC, TG)} or None}],
    "sections": [bytes]}; asserts every crc.
    """
    magic, version, flags, word = struct.unpack_from("<8sHHI", data, 0)
    assert magic == MAGIC and version in VERSIONS
    if version == 1:
        body_start, body_end = 16, 16 + word
        (header_crc,) = struct.unpack_from("<I", data, body_end)
        assert header_crc == zlib.crc32(data[:body_end])
        sections_start = body_end + 4
    else:
        body_size, header_crc = struct.unpack_from(TRAILER_FORMAT, data, len(data) - TRAILER_SIZE)
        body_start, body_end = len(data) - TRAILER_SIZE - body_size, len(data) - TRAILER_SIZE
        assert header_crc == zlib.crc32(data[body_start:body_end], zlib.crc32(data[:16]))
        sections_start = 16
    count, pos = read_size(version, data, body_start)
    records = []
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + name_len]
        pos += 2 + name_len
        dtype, ndim = struct.unpack_from("<BB", data, pos)
        dims = list(struct.unpack_from(f"<{ndim}I", data, pos + 2))
        pos += 2 + 4 * ndim
        encoding = data[pos]
        section_size, pos = read_size(version, data, pos + 1)
        (crc,) = struct.unpack_from("<I", data, pos)
        pos += 4
        params, planes = None, None
        if encoding == 1:
            params, pos = read_params(version, data, pos)
            if version >= 5 and params["flags"] & CODEBOOK_PLANES:
                planes, pos = read_planes(data, pos, 2 if params["flags"] & CODEBOOK_F16 else 4)
        elif encoding == ENC_PLANES:
            planes, pos = read_planes(data, pos, ITEMSIZE[dtype])
        record = dict(name=name, dtype=dtype, ndim=ndim, dims=dims, enc=encoding, size=section_size, crc=crc, params=params)
        if planes is not None:
            record["planes"] = planes
        records.append(record)
    assert pos == body_end
    sections, pos = [], sections_start
    for r in records:
        sections.append(data[pos : pos + r["size"]])
        assert zlib.crc32(sections[-1]) == r["crc"]
        pos += r["size"]
    assert pos == (len(data) if version == 1 else body_start)
    layout = dict(version=version, flags=flags, records=records, sections=sections)
    if version >= 2:
        layout["reserved"] = word
    return layout


def header_body(layout: dict, version: int, fix_section_crcs: bool = True) -> bytes:
    """The record count and records of `layout` in `version`'s field widths (v2 to v4: varints).

    Each record's `size` is written as given (a test that changes a section sets it).
    """
    body = pack_size(version, len(layout["records"]))
    for r, section in zip(layout["records"], layout["sections"]):
        crc = zlib.crc32(section) if fix_section_crcs else r["crc"]
        body += struct.pack("<H", len(r["name"])) + r["name"]
        body += struct.pack("<BB", r["dtype"], r["ndim"]) + struct.pack(f"<{len(r['dims'])}I", *r["dims"])
        body += struct.pack("<B", r["enc"]) + pack_size(version, r["size"]) + struct.pack("<I", crc)
        if r["params"] is not None:
            body += pack_params(version, r["params"])
        if "planes" in r:
            body += pack_planes(r["planes"])
    return body


def seal(
    version: int,
    body: bytes,
    sections: list[bytes],
    *,
    version_field: int | None = None,
    flags: int = 0,
    word: int | None = None,
    body_size: int | None = None,
) -> bytes:
    """A whole file of `version`'s layout around a header body, with a valid header crc32.

    `word` is the preamble's u32 (v1: the header size, by default len(body); v2 to v4:
    reserved, by default 0); `body_size` the trailer's H (by default len(body));
    `version_field` the version the preamble names (by default `version`).
    """
    preamble = MAGIC + struct.pack(
        "<HHI", version if version_field is None else version_field, flags, (len(body) if version == 1 else 0) if word is None else word
    )
    if version == 1:
        head = preamble + body
        return head + struct.pack("<I", zlib.crc32(head)) + b"".join(sections)
    trailer = struct.pack(TRAILER_FORMAT, len(body) if body_size is None else body_size, zlib.crc32(body, zlib.crc32(preamble)))
    return preamble + b"".join(sections) + body + trailer


def build_layout(layout: dict, fix_section_crcs: bool = True, **options) -> bytes:
    """Serialize `layout` in the layout of its "version"; section crcs recomputed unless told otherwise.

    The header crc is always recomputed; `options` go to `seal` (version_field, word...).
    """
    version = layout["version"]
    options.setdefault("flags", layout["flags"])
    if version >= 2:
        options.setdefault("word", layout.get("reserved", 0))
    return seal(version, header_body(layout, version, fix_section_crcs), layout["sections"], **options)


def as_version(layout: dict, version: int) -> dict:
    """`layout` re-laid out as `version`, sections unchanged; only where no re-encoding is needed.

    v2 -> v1 drops K (a dense record, b = 0, has no v1 form); v1 -> v2 needs K, which a
    v1 record lacks. v2 -> v3 adds flags 0, no scales and the Huffman table sizes; v3 ->
    v2 or v1 is only for records of that form (no rANS, float16 or scales, no xz file).
    """
    out = dict(layout, version=version, records=[dict(r) for r in layout["records"]], sections=list(layout["sections"]))
    out.pop("reserved", None)
    for r in out["records"]:
        assert version >= 3 or r["enc"] != ENC_FILE_XZ, "xz file records are version 3"
        if r["params"] is None:
            continue
        p = dict(r["params"])
        assert version >= 2 or p["b"] > 0, "version 1 has no dense records"
        assert "K" in p or version == 1, "K of a version-1 record is unknown"
        tables = huffman_table_sizes(p["k"], p["b"])
        if "flags" in p and version < 3:
            assert (p["flags"], p["axis"], p["TC"], p["TG"]) == (0, 0, *tables), "not a version-2 record"
        p.setdefault("flags", 0)
        p.setdefault("axis", 0)
        p.setdefault("TC", tables[0])
        p.setdefault("TG", tables[1])
        r["params"] = {name: p[name] for name in PARAMS[version]}
    return out


def _sparse_form(record):
    """A dense-eligible CodebookTensor as version 1 stored it: b = 1, every gap symbol 0."""
    if isinstance(record, CodebookTensor) and record.index_bits is None and record.kept == record.numel and record.kept:
        return CodebookTensor(record.shape, record.dtype, record.codebook, record.flat_positions(), record.codes, 1)
    return record


def version_2_codebook(record: CodebookTensor) -> tuple[bytes, dict]:
    """(section, params) of `record` as the version-2 writer stored it.

    float32 codebook, Huffman-coded streams (the narrowest of the smallest widths when
    the width is left open), dense (b = 0) when every position is kept and no width is
    given. The codec's Huffman-only coding is what that writer ran.
    """
    assert record.scale is None, "version 2 has no scales"
    k = len(record.codebook)
    codebook = np.ascontiguousarray(record.codebook, dtype="<f4").tobytes()
    if record.index_bits is None and record.kept == record.numel and record.kept:
        stream = encode_dense(record.codes, k, coders=(HUFFMAN,), compact=False)
        params = {"k": k, "b": 0, "E": record.kept, "K": record.kept, "C": len(stream.data), "G": 0}
        return codebook + stream.table + stream.data, params
    positions = record.flat_positions() if record.positions is None else record.positions
    layer = encode_layer_smallest(positions, record.codes, k, record.numel, record.index_bits, coders=(HUFFMAN,), compact=False)
    params = {"k": k, "b": layer.index_bits, "E": layer.entry_count, "K": record.kept}
    params |= {"C": len(layer.code_stream), "G": len(layer.gap_stream)}
    return codebook + layer.code_table + layer.gap_table + layer.code_stream + layer.gap_stream, params


def version_2_layout(model: CompressedModel) -> dict:
    """`model` as the version-2 writer wrote it, as a layout (see `version_2_codebook`).

    The writer's records in its order (names sorted, aliases, files last); codebook
    sections re-encoded, xz file sections decompressed to plain file records.
    """
    layout = version_4_layout(model)
    layout["version"] = 2
    for r, i in zip(layout["records"], range(len(layout["records"]))):
        if r["enc"] == ENC_FILE_XZ:
            layout["sections"][i] = lzma.decompress(layout["sections"][i], format=lzma.FORMAT_XZ)
            r["enc"] = ENC_FILE
        elif r["enc"] == ENC_CODEBOOK:
            layout["sections"][i], r["params"] = version_2_codebook(model.tensors[r["name"].decode()])
        r["size"] = len(layout["sections"][i])
    return layout


def version_5_layout(model: CompressedModel) -> dict:
    """`model` as the version-5 writer wrote it, as a layout: the writer's records, with every
    codebook record's streams coded again as the codec codes them with packed Huffman tables
    only (`compact=False`: the widths, coders and positions it then picks), its codebook
    and scales unchanged."""
    layout = parse_layout(container.to_bytes(model))
    layout["version"] = 5
    for i, r in enumerate(layout["records"]):
        if r["enc"] != ENC_CODEBOOK:
            continue
        record = model.tensors[r["name"].decode()]
        parts = split_section(6, r, layout["sections"][i])
        k, coders = len(record.codebook), record.coders or (HUFFMAN, ANS)
        flags = r["params"]["flags"] & (CODEBOOK_F16 | SCALE_F16 | CODEBOOK_PLANES)
        if r["params"]["b"] == 0 and not r["params"]["flags"] & SIGNIFICANCE:
            stream = encode_dense(record.codes, k, coders, compact=False)
            flags |= CODE_RANS if stream.coder == ANS else 0
            tables, streams = (stream.table, b""), (stream.data, b"")
        else:
            positions = record.flat_positions() if record.positions is None else record.positions
            layer = encode_layer_smallest(positions, record.codes, k, record.numel, record.index_bits, coders, record.shape, compact=False)
            flags |= (CODE_RANS if layer.code_coder == ANS else 0) | {ANS: GAP_RANS, 2: SIGNIFICANCE}.get(layer.gap_coder, 0)
            tables, streams = (layer.code_table, layer.gap_table), (layer.code_stream, layer.gap_stream)
            r["params"] = dict(r["params"], b=layer.index_bits, E=layer.entry_count)
        r["params"] = dict(r["params"], flags=flags, C=len(streams[0]), G=len(streams[1]), TC=len(tables[0]), TG=len(tables[1]))
        layout["sections"][i] = parts["codebook"] + parts["scales"] + b"".join(tables) + b"".join(streams)
        r["size"] = len(layout["sections"][i])
    return layout


def version_4_layout(model: CompressedModel) -> dict:
    """`model` as the version-4 writer wrote it, as a layout: the version-5 writer's records,
    with every byte-plane record stored plainly: an encoding-5 tensor as its raw bytes
    (encoding 0), a codebook's planes as its float16 or float32 entries (bit 5 cleared)."""
    layout = version_5_layout(model)
    layout["version"] = 4
    for i, r in enumerate(layout["records"]):
        record = model.tensors.get(r["name"].decode())
        if r["enc"] == ENC_PLANES:
            tensor = record.tensor.detach().contiguous()
            layout["sections"][i] = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            r["enc"] = ENC_RAW
        elif r["enc"] == ENC_CODEBOOK and r["params"]["flags"] & CODEBOOK_PLANES:
            parts = split_section(5, r, layout["sections"][i])
            dtype = "<f2" if r["params"]["flags"] & CODEBOOK_F16 else "<f4"
            entries = np.ascontiguousarray(record.codebook, dtype="<f4").astype(dtype).tobytes()
            layout["sections"][i] = entries + b"".join(parts[n] for n in ("scales", "code_table", "gap_table", "code_stream", "gap_stream"))
            r["params"] = dict(r["params"], flags=r["params"]["flags"] & ~CODEBOOK_PLANES)
        else:
            continue
        r.pop("planes", None)
        r["size"] = len(layout["sections"][i])
    return layout


def version_3_layout(model: CompressedModel) -> dict:
    """`model` as the version-3 writer wrote it, as a layout: the version-4 writer's records,
    with every significance-coded one coded as gaps (the widths and coders the codec picks
    when it is not given the tensor's shape, which is what that writer ran)."""
    layout = version_4_layout(model)
    layout["version"] = 3
    for i, r in enumerate(layout["records"]):
        if r["enc"] != ENC_CODEBOOK or not r["params"]["flags"] & SIGNIFICANCE:
            continue
        record = model.tensors[r["name"].decode()]
        parts = split_section(4, r, layout["sections"][i])
        k = len(record.codebook)
        layer = encode_layer_smallest(record.flat_positions(), record.codes, k, record.numel, record.index_bits, compact=False)
        flags = r["params"]["flags"] & (CODEBOOK_F16 | SCALE_F16)
        flags |= (CODE_RANS if layer.code_coder == ANS else 0) | (GAP_RANS if layer.gap_coder == ANS else 0)
        r["params"] = dict(r["params"], b=layer.index_bits, flags=flags, E=layer.entry_count, C=len(layer.code_stream))
        r["params"] |= {"G": len(layer.gap_stream), "TC": len(layer.code_table), "TG": len(layer.gap_table)}
        layout["sections"][i] = parts["codebook"] + parts["scales"] + layer.code_table + layer.gap_table + layer.code_stream + layer.gap_stream
        r["size"] = len(layout["sections"][i])
    return layout


def encode(model: CompressedModel, version: int) -> bytes:
    """`model` as a file of `version`: the writer's bytes (v6), the version-5 writer's (see
    `version_5_layout`), the version-4 writer's (see `version_4_layout`), the version-3 writer's (see
    `version_3_layout`), the version-2 writer's (see `version_2_layout`), or those re-laid
    out as v1.

    For version 1 a record the writer would store dense is stored with 1-bit gaps, the
    width deepzip 0.1 chose for it (the narrowest of the equal smallest). Ties are kept.
    """
    if version == 6:
        return container.to_bytes(model)
    if version == 5:
        return build_layout(version_5_layout(model))
    if version == 4:
        return build_layout(version_4_layout(model))
    if version == 3:
        return build_layout(version_3_layout(model))
    if version == 2:
        return build_layout(version_2_layout(model))
    forms: dict[int, object] = {}
    tensors = {name: forms.setdefault(id(r), _sparse_form(r)) for name, r in model.tensors.items()}
    return build_layout(as_version(version_2_layout(CompressedModel(tensors, dict(model.files))), 1))


# ---------------------------------------------------------------- the small model


def small_model() -> CompressedModel:
    """The hand-made model of the golden tests: a 2x3 codebook weight and a float32 bias."""
    return CompressedModel(
        {
            "fc.weight": CodebookTensor(
                (2, 3),
                torch.float32,
                np.array([-1.0, 0.5], np.float32),
                np.array([0, 4], np.int64),
                np.array([1, 0], np.uint16),
                2,
            ),
            "fc.bias": RawTensor(torch.tensor([1.5, -2.0], dtype=torch.float32)),
        }
    )


BIAS, WEIGHT = 0, 1  # record indices in small_model's file (sorted by name)


def small_bytes(version: int) -> bytes:
    return encode(small_model(), version)


def crafted(edit, version: int) -> bytes:
    """small_model's file of `version` after `edit(records, sections)`, with valid crcs."""
    layout = parse_layout(small_bytes(version))
    edit(layout["records"], layout["sections"])
    return build_layout(layout)


def assert_rejected(data: bytes, name: str | None, match: str | None = None) -> FormatError:
    """The reader refuses `data` with a FormatError that is no checksum error and names `name`."""
    with pytest.raises(FormatError, match=match) as err:
        container.from_bytes(data)
    message = str(err.value)
    assert "checksum" not in message  # the crafted file's crcs are valid
    assert not isinstance(err.value, ChecksumError)
    if name is not None:
        assert name in message, message
    return err.value


# ---------------------------------------------------------------- references


def spec_entries(positions, numel: int, index_bits: int) -> list[int]:
    """All entry positions (fillers included) per docs/FORMAT.md, "The entries": from
    p_{-1} = -1, step 2**b while the next kept weight, or finally the end n, is too far."""
    widest, prev, out = 1 << index_bits, -1, []
    for target in [*[int(p) for p in positions], numel]:
        while target - prev > widest:
            prev += widest
            out.append(prev)
        out.append(target)
        prev = target
    out.pop()  # the end itself is not stored
    return out


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """dtype, shape and every bit equal (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return torch.equal(a, b)


def round_float32(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """float32 `values` converted to `dtype`, round to nearest, ties to even, by numpy alone.

    numpy rounds float32 to float16 so; it has no bfloat16, whose conversion is done on the
    bits: add 0x7FFF plus the lowest kept bit, keep the top 16 (a NaN becomes the quiet
    NaN 0x7FC0: the spec promises a NaN, not which). float64 holds every float32 exactly.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == torch.float32:
        return torch.from_numpy(values.copy())
    if dtype == torch.float64:
        return torch.from_numpy(values.astype(np.float64))
    if dtype == torch.float16:
        with np.errstate(over="ignore"):  # beyond float16's range: inf, as it must
            return torch.from_numpy(values.astype(np.float16))
    assert dtype == torch.bfloat16, dtype
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded[np.isnan(values)] = 0x7FC0
    return torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16)


def scaled_reference(shape, dtype, codebook, positions, codes, scales=None, axis=None) -> torch.Tensor:
    """A codebook tensor decoded by docs/FORMAT.md's formula, in numpy.

    Entry values are codebook[c] widened to float32 (a float16 entry exactly); every
    other position is 0. With `scales` (float16 or float32, along dimension `axis`), the
    value at flat position p is multiplied, in float32, by scale[j], j = (p // prod(
    shape[axis+1:])) % shape[axis]: unkept positions give 0 * scale[j]. Then the float32
    result is rounded to `dtype` (`round_float32`). `positions` None: every position.
    """
    numel = int(np.prod(shape, dtype=np.int64))
    flat = np.zeros(numel, np.float32)
    where = slice(None) if positions is None else np.asarray(positions, dtype=np.int64)
    flat[where] = np.asarray(codebook).astype(np.float32)[np.asarray(codes, dtype=np.int64)]
    if scales is not None:
        inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        slice_of = (np.arange(numel) // inner) % shape[axis]
        flat = flat * np.asarray(scales).astype(np.float32)[slice_of]  # float32 * float32: rounded to float32
        assert flat.dtype == np.float32
    return round_float32(flat, dtype).reshape(shape)


def relative_symbols(positions, codes, numel: int, index_bits: int, k: int) -> tuple[list[int], list[int]]:
    """(gap symbols, code symbols) of the entries per docs/FORMAT.md, "The entries": gap
    symbol p_i - p_{i-1} - 1 from p_{-1} = -1, code symbol k for a filler."""
    entries = spec_entries(positions, numel, index_bits)
    code_of = dict(zip((int(p) for p in positions), (int(c) for c in codes)))
    gaps = [p - q - 1 for p, q in zip(entries, [-1, *entries[:-1]])]
    return gaps, [code_of.get(p, k) for p in entries]


# ---------------------------------------------------------------- rANS, from the spec alone
# docs/FORMAT.md, "rANS-coded streams", in plain Python integers (no deepzip.codec.ans).


def rans_table(freqs: list[int]) -> bytes:
    """A frequency table's bytes: P, then a varint token per run of unused symbols
    (2 (r - 1) + 1) and per used symbol (2 (f - 1)); all-zero frequencies give 0xFF."""
    total = sum(freqs)
    if total == 0:
        return b"\xff"
    precision = total.bit_length() - 1
    assert total == 1 << precision <= 1 << 16
    last = max(s for s, f in enumerate(freqs) if f)
    out, run = bytearray([precision]), 0
    for f in freqs[: last + 1]:
        if not f:
            run += 1
            continue
        if run:
            out += varint(2 * (run - 1) + 1)
            run = 0
        out += varint(2 * (f - 1))
    return bytes(out)


def rans_frequencies(table: bytes, alphabet: int) -> list[int]:
    """The frequencies of a valid table of `alphabet` symbols (asserts it is one, whole)."""
    if table == b"\xff":
        return [0] * alphabet
    precision, pos, total, freqs = table[0], 1, 0, []
    assert precision <= 16
    while total < 1 << precision:
        token, pos = read_varint(table, pos)
        if token & 1:
            freqs += [0] * ((token >> 1) + 1)
        else:
            freqs.append((token >> 1) + 1)
            total += freqs[-1]
    assert pos == len(table) and total == 1 << precision and len(freqs) <= alphabet
    return freqs + [0] * (alphabet - len(freqs))


def rans_encode(symbols: list[int], freqs: list[int]) -> bytes:
    """The coded bytes: from x = 0, last symbol first, a word out whenever x >= f 2**(64-P),
    then x in its fewest little-endian bytes and the words, the last emitted first."""
    precision = sum(freqs).bit_length() - 1
    if max(freqs) == 1 << precision:
        return b""  # a certain symbol: no bits at all
    starts = [sum(freqs[:s]) for s in range(len(freqs))]
    x, words = 0, []
    for s in reversed(symbols):
        if x >= freqs[s] << (64 - precision):
            words.append(x & 0xFFFFFFFF)
            x >>= 32
        x = (x // freqs[s] << precision) + x % freqs[s] + starts[s]
    return x.to_bytes((x.bit_length() + 7) // 8, "little") + b"".join(struct.pack("<I", w) for w in reversed(words))


def rans_decode(data: bytes, freqs: list[int], count: int) -> list[int]:
    """`count` symbols of the coded bytes (asserts they are valid: final state 0, every word read)."""
    precision = sum(freqs).bit_length() - 1
    if sum(freqs) == 0 or max(freqs) == 1 << precision:
        assert not data and (count == 0 or sum(freqs))
        return [freqs.index(max(freqs))] * count
    head = len(data) if len(data) <= 8 else 5 + (len(data) - 5) % 4
    assert head == 0 or data[head - 1] != 0
    x = int.from_bytes(data[:head], "little")
    words = [int.from_bytes(data[i : i + 4], "little") for i in range(head, len(data), 4)]
    owner = [s for s, f in enumerate(freqs) for _ in range(f)]
    starts = [sum(freqs[:s]) for s in range(len(freqs))]
    out, read = [], 0
    for _ in range(count):
        q = x % (1 << precision)
        s = owner[q]
        x = freqs[s] * (x >> precision) + q - starts[s]
        if x < 1 << 32 and read < len(words):
            x, read = (x << 32) + words[read], read + 1
        out.append(s)
    assert x == 0 and read == len(words)
    return out


def simple_frequencies(counts: list[int], precision: int = 12) -> list[int]:
    """Frequencies summing to 2**precision with f > 0 exactly where the count is (a plain
    proportional rounding, the remainder to the most frequent: any valid table will do)."""
    total, used = sum(counts), [s for s, c in enumerate(counts) if c]
    freqs = [max(1, c * (1 << precision) // total) if c else 0 for c in counts]
    top = max(used, key=lambda s: counts[s])
    freqs[top] += (1 << precision) - sum(freqs)
    assert freqs[top] > 0 and sum(freqs) == 1 << precision
    return freqs
