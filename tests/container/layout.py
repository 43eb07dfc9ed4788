"""Spec-level helpers of the .dzip format tests: a strict parser and a builder for both versions.

Written from the format's description (docs/FORMAT.md; container/spec.py and header.py
until it is updated), not from the reader, so that expected bytes and crafted files do not
inherit the reader's mistakes. `parse_layout` splits a well-formed file into its fields;
`build_layout` writes a (possibly edited) layout back in either version, recomputing the
checksums, so that a crafted file reaches the semantic checks behind valid crcs.

Version 1: preamble (magic, u16 version, u16 flags, u32 header size H), header (u32
record count, records), u32 crc32 of preamble + header, sections. Version 2: preamble
(the u32 is reserved, 0), sections, header body (varint record count, records), trailer (u32
body size H, u32 crc32 of preamble + body). A record: u16 name length, name, u8 dtype, u8
ndim, u32 dims, u8 encoding, section size (u32 in v1, varint in v2), u32 section crc32, and
for codebook records u16 k, u8 b, then E, C, G (u32, v1) or E, K, C, G (varints, v2).

A varint (version 2) is unsigned LEB128: 7 bits a byte, the least significant group
first, the high bit set on every byte but the last; minimal, at most 10 bytes, < 2**64.

The writer writes version 2 only; `encode(model, 1)` re-lays its output out as version 1,
which is byte for byte what deepzip 0.1 wrote (checked against the hand-derived version-1
bytes and against tests/container/golden/v1.dzip, in test_fileformat.py).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ChecksumError, FormatError

MAGIC = bytes([0x89, 0x44, 0x5A, 0x49, 0x50, 0x0D, 0x0A, 0x1A])
VERSIONS = (1, 2)
PARAMS = {1: ("k", "b", "E", "C", "G"), 2: ("k", "b", "E", "K", "C", "G")}
PARAMS_FORMAT = {1: "<HBIII"}  # version 2: "<HB" then four varints
TRAILER_FORMAT = "<II"  # version 2: body size H, crc32
TRAILER_SIZE = struct.calcsize(TRAILER_FORMAT)


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
    """A record count or section size: u32 in version 1, varint in version 2."""
    return struct.pack("<I", value) if version == 1 else varint(value)


def read_size(version: int, data: bytes, pos: int) -> tuple[int, int]:
    if version == 1:
        return struct.unpack_from("<I", data, pos)[0], pos + 4
    return read_varint(data, pos)


def pack_params(version: int, params: dict) -> bytes:
    if version == 1:
        return struct.pack(PARAMS_FORMAT[1], *(params[name] for name in PARAMS[1]))
    return struct.pack("<HB", params["k"], params["b"]) + b"".join(varint(params[n]) for n in ("E", "K", "C", "G"))


def read_params(version: int, data: bytes, pos: int) -> tuple[dict, int]:
    if version == 1:
        return dict(zip(PARAMS[1], struct.unpack_from(PARAMS_FORMAT[1], data, pos))), pos + struct.calcsize(PARAMS_FORMAT[1])
    k, b = struct.unpack_from("<HB", data, pos)
    params, pos = dict(k=k, b=b), pos + 3
    for name in ("E", "K", "C", "G"):
        params[name], pos = read_varint(data, pos)
    return params, pos


# ---------------------------------------------------------------- parse and build


def parse_layout(data: bytes) -> dict:
    """Split a well-formed file of either version into preamble fields, record dicts and sections.

    {"version", "flags", "reserved" (v2), "records": [{name, dtype, ndim, dims, enc, size,
    crc, params: {k, b, E, (K,) C, G} or None}], "sections": [bytes]}; asserts every crc.
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
        params = None
        if encoding == 1:
            params, pos = read_params(version, data, pos)
        records.append(dict(name=name, dtype=dtype, ndim=ndim, dims=dims, enc=encoding, size=section_size, crc=crc, params=params))
    assert pos == body_end
    sections, pos = [], sections_start
    for r in records:
        sections.append(data[pos : pos + r["size"]])
        assert zlib.crc32(sections[-1]) == r["crc"]
        pos += r["size"]
    assert pos == (len(data) if version == 1 else body_start)
    layout = dict(version=version, flags=flags, records=records, sections=sections)
    if version == 2:
        layout["reserved"] = word
    return layout


def header_body(layout: dict, version: int, fix_section_crcs: bool = True) -> bytes:
    """The record count and records of `layout` in `version`'s field widths (v2: varints).

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

    `word` is the preamble's u32 (v1: the header size, by default len(body); v2: reserved,
    by default 0); `body_size` the v2 trailer's H (by default len(body)); `version_field`
    the version the preamble names (by default `version`).
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
    if version == 2:
        options.setdefault("word", layout.get("reserved", 0))
    return seal(version, header_body(layout, version, fix_section_crcs), layout["sections"], **options)


def as_version(layout: dict, version: int) -> dict:
    """`layout` re-laid out as `version`: v2 -> v1 drops K (a dense record, b = 0, has no v1 form)."""
    out = dict(layout, version=version, records=[dict(r) for r in layout["records"]], sections=list(layout["sections"]))
    out.pop("reserved", None)
    for r in out["records"]:
        if r["params"] is not None:
            assert version == 2 or r["params"]["b"] > 0, "version 1 has no dense records"
            assert "K" in r["params"] or version == 1, "K of a version-1 record is unknown"
            r["params"] = {name: r["params"][name] for name in PARAMS[version]}
    return out


def _sparse_form(record):
    """A dense-eligible CodebookTensor as version 1 stored it: b = 1, every gap symbol 0."""
    if isinstance(record, CodebookTensor) and record.index_bits is None and record.kept == record.numel and record.kept:
        return CodebookTensor(record.shape, record.dtype, record.codebook, record.flat_positions(), record.codes, 1)
    return record


def encode(model: CompressedModel, version: int) -> bytes:
    """`model` as a file of `version`: the writer's bytes (v2) or those re-laid out as v1.

    For version 1 a record the writer would store dense is stored with 1-bit gaps, the
    width deepzip 0.1 chose for it (the narrowest of the equal smallest). Ties are kept.
    """
    if version == 2:
        return container.to_bytes(model)
    forms: dict[int, object] = {}
    tensors = {name: forms.setdefault(id(r), _sparse_form(r)) for name, r in model.tensors.items()}
    v2 = container.to_bytes(CompressedModel(tensors, dict(model.files)))
    return build_layout(as_version(parse_layout(v2), 1))


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
