"""Mutation fuzzing of the .dzip reader: seed files, a spec-level layout parser, mutators.

The reader's contract (docs/FORMAT.md, "What a reader must reject"): for ANY bytes,
``container.from_bytes(data).state_dict()`` either succeeds or raises `FormatError`
(or a subclass); it never raises anything else, never crashes the process (the numba
kernels do no bounds checks), never hangs and never allocates far more memory than
decoding an undamaged file. This module provides the pieces to test that; it is quality
tooling, used by ``tests/container/test_fuzz.py`` (a quick in-process run) and
``benchmarks/fuzz_reader.py`` (long runs in a watched subprocess).

- `seed_files()` builds a few real files in memory with deepzip's own API (the writer's
  current version, and the same models in the version-2 writer's form: Huffman streams,
  float32 codebooks, plain files) and adds the committed golden files of versions 1 to 6.
- `parse_layout()` finds the offset of every field of a file of any version, written
  from the format's description alone (not from the reader), leniently: it describes as
  much of a damaged file as it can. `recompute_crcs()` rewrites the section and header
  checksums from the record sizes, so that mutations get past the crc32 checks and reach
  the semantic checks behind them.
- `MUTATORS` maps a name to a pure function ``f(data, rng) -> bytes``; everything random
  comes from the numpy Generator, so an input is reproducible from its seed.
- `generate()` derives one mutated input deterministically from (seed, index);
  `check_one()` runs the reader on it.

The two layouts (docs/FORMAT.md): both start with a 16-byte preamble (magic, u16 version,
u16 flags, u32 word). Version 1: the word is the header size H, the header (u32 record
count, records with u32 section sizes) follows, then a u32 crc32 of preamble + header,
then the sections. Versions 2 and 3: the word is reserved (0); the sections follow the
preamble, then the header body (varint record count, records with varint section sizes
and, for codebook records, u16 k, u8 b, varints E, K, C, G), then an 8-byte trailer: u32
body size H, u32 crc32 of preamble + body. A varint is unsigned LEB128 (7 bits a byte, low
group first, high bit on all but the last; minimal, at most 10 bytes, < 2**64): an edit may
change its length, so the mutators re-encode it and shift what follows (the trailer's H
too). A codebook record with b = 0 (versions 2 and 3) is dense: no gap table, no gap stream.

Version 3 codebook records add, after b, u8 coding flags (bit 0: the code stream is rANS,
bit 1: the gap stream is, bit 2: float16 codebook, bit 3: float16 scales) and u8 scale axis
(0: none, else the dimension + 1), and after G the varints TC and TG, the table sizes; the
section is codebook | scales | code table | gap table | code stream | gap stream. File
records may be xz-compressed (encoding 4, shape = the decoded size). The v3-aware mutators
(`table_flip` and `table_resize` on rANS tables, `stream_recode`, `coding_edit`,
`xz_edit`) keep the rest of a file consistent so that their damage reaches the decoders.
"""

from __future__ import annotations

import dataclasses
import functools
import lzma
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepzip.errors import FormatError

MAGIC = b"\x89DZIP\r\n\x1a"
PREAMBLE_SIZE = 16
TRAILER_SIZE = 8  # versions 2 and 3: u32 header body size, u32 header crc32
VARINT = 0  # the "width" of a varint field in the tables below: its length is its own
VARINT_MAX_BYTES = 10
# The files committed for the compatibility tests: seeds of each version's layout.
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "container" / "golden"
GOLDEN_V1 = GOLDEN / "v1.dzip"
# The decoded-size cap the fuzzed reader runs under. A rANS stream of a certain symbol
# costs no bytes, so one edit of a shape makes a tiny *valid* file decode to anything up to
# the cap (64 GiB by default): that is the cap's job, not damage, but under the harness's
# memory limit it would read as a MemoryError. 16 MiB keeps the largest valid decode (the
# reader's intermediates take ~10-20 bytes an element) well inside it; above, the header
# check refuses the file, which is itself a path under test.
FUZZ_MAX_DECODED_SIZE = 16 << 20

# ---------------------------------------------------------------- the reader under test


def check_one(data: bytes, max_decoded_size: int | None = FUZZ_MAX_DECODED_SIZE) -> str:
    """Decode `data` to dense tensors: "ok", or "format_error" if the reader raised FormatError.

    Any other exception propagates: that is a bug in the reader.
    """
    from deepzip import container

    try:
        container.from_bytes(data, max_decoded_size=max_decoded_size).state_dict()
    except FormatError:
        return "format_error"
    return "ok"


# ---------------------------------------------------------------- seed files


@functools.lru_cache(maxsize=1)
def _seed_models() -> tuple[tuple[str, object], ...]:
    """The models the seed files are written from: {name: CompressedModel}, deterministic."""
    import torch
    from torch import nn

    import deepzip
    from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor

    models = {}
    with torch.random.fork_rng():
        # (a) small MLP, 80% pruned, 4-bit shared weights.
        torch.manual_seed(0)
        small = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        deepzip.prune_(small, 0.8, min_size=0)
        deepzip.quantize_(small, 4, min_size=0)
        models["mlp_small"] = deepzip.export(small)

        # (b) LeNet-300-100 sized fc layers, ~92% pruned, 5-6 bits, plus an 8-bit conv.
        torch.manual_seed(1)
        mid = nn.Module()
        mid.conv = nn.Conv2d(1, 8, 5)
        mid.fc1 = nn.Linear(784, 300)
        mid.fc2 = nn.Linear(300, 100)
        mid.fc3 = nn.Linear(100, 10)
        deepzip.prune_(mid, {"fc*": 0.92, "conv": 0.5}, min_size=0)
        deepzip.quantize_(mid, {"fc1": 5, "fc*": 6, "conv": 8}, min_size=0)
        models["lenet_conv"] = deepzip.export(mid, index_bits={"fc3": 3})

        # (c) raw tensors of every dtype and codebook tensors of the other float dtypes,
        # with edge cases: a 0-d tensor, an empty tensor, all-zero codebook tensors,
        # dense codebook tensors (b = 0), tied tensors (aliases) and attached files.
        torch.manual_seed(2)
        gen = np.random.default_rng(2)

        def sparse(shape, density, k, dtype, index_bits=None, p=None, **scaling):
            numel = int(np.prod(shape))
            positions = np.flatnonzero(gen.random(numel) < density).astype(np.int64)
            codes = gen.choice(k, size=positions.size, p=p).astype(np.uint16)
            codebook = np.sort(gen.normal(size=k)).astype(np.float32)
            return CodebookTensor(tuple(shape), dtype, codebook, positions, codes, index_bits, **scaling)

        def dense(shape, k, dtype, p=None, codebook=None, **scaling):
            codes = gen.choice(k, size=int(np.prod(shape)), p=p).astype(np.uint16)
            codebook = np.sort(gen.normal(size=k)).astype(np.float32) if codebook is None else codebook
            return CodebookTensor(tuple(shape), dtype, codebook, None, codes, **scaling)

        models["dtypes"] = CompressedModel(
            {
                "half.weight": RawTensor(torch.randn(6, 5).half()),
                "bf16.weight": RawTensor(torch.randn(7).bfloat16()),
                "double.bias": RawTensor(torch.randn(3, 2).double()),
                "bn.num_batches_tracked": RawTensor(torch.tensor(12345, dtype=torch.int64)),
                "ids": RawTensor(torch.arange(-4, 4, dtype=torch.int32)),
                "short": RawTensor(torch.arange(-3, 3, dtype=torch.int16)),
                "tiny": RawTensor(torch.arange(-2, 2, dtype=torch.int8)),
                "bytes": RawTensor(torch.arange(250, 256, dtype=torch.uint8)),
                "mask": RawTensor(torch.tensor([True, False, True])),
                "empty": RawTensor(torch.zeros(0, 3, 2)),
                "emb.weight": sparse((40, 16), 0.1, 16, torch.float16),
                "proj.weight": sparse((3, 4, 5, 6), 0.3, 8, torch.bfloat16, index_bits=1),
                "wide.weight": sparse((2, 3000), 0.02, 3, torch.float64, index_bits=12),
                "zero.weight": sparse((4, 2), 0.0, 1, torch.float32, index_bits=3),
                "scalar.weight": sparse((), 1.0, 2, torch.float32),  # every position kept: dense
                "nil.weight": sparse((0, 7), 0.0, 1, torch.float32),
                "dense.weight": dense((16, 12), 5, torch.float16),
                "dense_bf16.weight": dense((20, 30), 300, torch.bfloat16),
                "dense_one.weight": dense((9,), 1, torch.float32),
                # Tied tensors (alias records), one of them dense, and attached files.
                **dict.fromkeys(["decoder.weight", "encoder.weight"], sparse((12, 9), 0.5, 4, torch.float32)),
                **dict.fromkeys(["lm_head.weight", "wte.weight"], dense((10, 6), 7, torch.float32)),
                **dict.fromkeys(["head.bias", "tail.bias"], RawTensor(torch.randn(5))),
            },
            {"config.json": b'{"model_type": "bert", "hidden_size": 32}', "tok/vocab.txt": b"[PAD]\n[UNK]\n"},
        )

        # (d) what version 3 adds: rANS streams (a certain symbol's empty one too),
        # Huffman codes beside rANS gaps, float16 codebooks, float32 and float16 scales
        # along the first, an inner and the last dim, a tied scaled tensor, a zero-size
        # scaled tensor and an xz-compressed file beside a plain one.
        gen = np.random.default_rng(3)
        skew = [0.86, 0.06, 0.04, 0.02, 0.01, 0.01]
        half = gen.normal(size=5).astype(np.float16).astype(np.float32)  # exactly float16
        scaled16 = dense((3, 4, 5), 5, torch.float16, codebook=half, scale=np.array([0.5, -2.0, 1.0, 0.25, 4.0], np.float32), scale_axis=2)
        uniform = sparse((24, 40), 0.85, 16, torch.float16, index_bits=4)
        uniform = CodebookTensor(uniform.shape, uniform.dtype, uniform.codebook, uniform.positions,
                                 (np.arange(uniform.codes.size) % 16).astype(np.uint16), 4)  # fmt: skip
        models["v3_features"] = CompressedModel(
            {
                "rans_dense.weight": dense((16, 12), 6, torch.float32, p=skew),
                "certain.weight": dense((4, 5), 1, torch.float16),
                "rans_both.weight": sparse((20, 30), 0.85, 6, torch.bfloat16, p=skew),
                "rans_gaps.weight": uniform,
                "f16cb.weight": sparse((10, 10), 0.4, 6, torch.float32, index_bits=2),
                "scaled_rows.weight": sparse((8, 6), 0.5, 4, torch.bfloat16, scale=np.exp(gen.normal(size=8)).astype(np.float32), scale_axis=0),
                "scaled16.weight": scaled16,
                "tied16.weight": scaled16,
                "scaled_mid.weight": dense((2, 3, 4), 3, torch.float32, scale=gen.normal(size=3).astype(np.float32), scale_axis=1),
                "scaled_empty.weight": CodebookTensor(
                    (0, 3), torch.float32, np.ones(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16),
                    scale=np.zeros(3, np.float32), scale_axis=1,
                ),
                "bias": RawTensor(torch.randn(6)),
            },
            {"tokenizer.json": "".join(f'"t{i}": {i % 97},\n' for i in range(300)).encode(), "config.json": b'{"v": 3}'},
        )
        f16 = models["v3_features"].tensors["f16cb.weight"]
        models["v3_features"].tensors["f16cb.weight"] = CodebookTensor(
            f16.shape, f16.dtype, f16.codebook.astype(np.float16).astype(np.float32), f16.positions, f16.codes, 2
        )
    return tuple(models.items())


@functools.lru_cache(maxsize=1)
def _seed_files() -> tuple[tuple[str, bytes], ...]:
    from deepzip import container

    files = {}
    for name, model in _seed_models():
        files[name] = container.to_bytes(model)
        if name != "v3_features":  # version 2 had none of it
            files[f"{name}_v2"] = _version_2_file(model)
    for version in (1, 2, 3, 4, 5, 6):
        files[f"golden_v{version}"] = (GOLDEN / f"v{version}.dzip").read_bytes()
    return tuple(files.items())


def _version_2_file(model) -> bytes:
    """`model` as the version-2 writer wrote it: the writer's records, every codebook
    float32 and Huffman-coded (the codec restricted to Huffman), files plain."""
    import torch

    from deepzip import container
    from deepzip.codec.layer import encode_dense, encode_layer_smallest
    from deepzip.codec.streams import HUFFMAN

    data = container.to_bytes(model)
    replace = {}
    for r in parse_layout(data).records:
        name = data[r.name_offset : r.name_offset + r.name_size].decode()
        section = data[r.section_offset : r.section_offset + r.section_size]
        if r.value("encoding") == 4:
            replace[r.index] = (3, lzma.decompress(section, format=lzma.FORMAT_XZ), None)
        elif r.value("encoding") == ENCODING_PLANES:
            tensor = model.tensors[name].tensor.contiguous()
            replace[r.index] = (0, tensor.reshape(-1).view(torch.uint8).numpy().tobytes(), None)
        elif r.value("encoding") == 1:
            t = model.tensors[name]
            k = len(t.codebook)
            codebook = np.ascontiguousarray(t.codebook, dtype="<f4").tobytes()
            if t.index_bits is None and t.kept == t.numel and t.kept:
                stream = encode_dense(t.codes, k, coders=(HUFFMAN,), compact=False)
                params = {"k": k, "b": 0, "E": t.kept, "K": t.kept, "C": len(stream.data), "G": 0}
                replace[r.index] = (1, codebook + stream.table + stream.data, params)
            else:
                positions = t.flat_positions() if t.positions is None else t.positions
                layer = encode_layer_smallest(positions, t.codes, k, t.numel, t.index_bits, coders=(HUFFMAN,), compact=False)
                params = {"k": k, "b": layer.index_bits, "E": layer.entry_count, "K": t.kept}
                params |= {"C": len(layer.code_stream), "G": len(layer.gap_stream)}
                parts = (layer.code_table, layer.gap_table, layer.code_stream, layer.gap_stream)
                replace[r.index] = (1, codebook + b"".join(parts), params)
    return relayout(data, 2, replace)


def seed_files() -> dict[str, bytes]:
    """A few real .dzip files, built in memory (and cached): {name: bytes}.

    Version 3, written by this deepzip: "mlp_small": Linear 64-32-10, 80% pruned, 4 bits.
    "lenet_conv": a conv layer (8 bits) and Linear 784-300-100-10 (~92% pruned, 5-6 bits).
    "dtypes": raw tensors of all ten dtypes and codebook tensors in float16/bfloat16/float64,
    index widths 1 to 12, dense records (b = 0, k from 1 to 300), a 0-d, an empty and two
    all-zero tensors, aliases (of a sparse, a dense and a raw tensor) and two attached
    files. "v3_features": rANS code and gap streams (with Huffman beside them), float16
    codebooks, float32 and float16 scales, an xz-compressed file. Version 2: the first
    three as the version-2 writer wrote them ("mlp_small_v2", ...). The committed golden
    files: "golden_v1" (written by deepzip 0.1), "golden_v2", "golden_v3".
    Deterministic; the global torch RNG is left alone.
    """
    return dict(_seed_files())


# ---------------------------------------------------------------- layout (docs/FORMAT.md)


@dataclass(frozen=True)
class Field:
    """One unsigned field: `name` (spec name), byte `offset`, `width` in bytes; little-endian
    fixed width, or (`varint`) an LEB128 varint of `width` bytes as the file has it."""

    name: str
    offset: int
    width: int
    value: int
    record: int | None = None  # record index; None for preamble, record count and trailer
    varint: bool = False

    @property
    def max(self) -> int:
        """Largest value the field can hold (a varint: any u64)."""
        return (1 << 64) - 1 if self.varint else (1 << (8 * self.width)) - 1


# Per version: widths of the record count and section size, and the coding parameters
# (VARINT: a varint, versions 2 and 3). The version-3 flags byte is "coding_flags" (the
# preamble has "flags"); TC and TG are the code and gap table sizes.
_COUNT_WIDTH = {1: 4, 2: VARINT, 3: VARINT}
_PARAMS = {
    1: (("k", 2), ("b", 1), ("E", 4), ("C", 4), ("G", 4)),
    2: (("k", 2), ("b", 1), ("E", VARINT), ("K", VARINT), ("C", VARINT), ("G", VARINT)),
    3: (("k", 2), ("b", 1), ("coding_flags", 1), ("scale_axis", 1), ("E", VARINT), ("K", VARINT),
        ("C", VARINT), ("G", VARINT), ("TC", VARINT), ("TG", VARINT)),
}  # fmt: skip
CODE_RANS, GAP_RANS, CODEBOOK_F16, SCALE_F16, CODEBOOK_PLANES = 1, 2, 4, 8, 32
CODE_COMPACT, GAP_COMPACT = 64, 128  # version 6: the Huffman table is compact
ENCODING_PLANES = 5  # version 5: a raw tensor's byte planes, each with a mode byte (and T, D unless stored)
_ITEMSIZE = {1: 4, 2: 2, 3: 2, 4: 8, 5: 8, 6: 4, 7: 2, 8: 1, 9: 1, 10: 1}
PARTS = ("codebook", "scales", "code_table", "gap_table", "code_stream", "gap_stream")
_PART_SIZE = {"code_table": "TC", "gap_table": "TG", "code_stream": "C", "gap_stream": "G"}


def huffman_table_sizes(k: int, b: int) -> tuple[int, int]:
    """Bytes of the Huffman code and gap tables: ceil((k+1)/2), ceil(2**b/2) (0 when b = 0)."""
    return (k + 2) // 2, ((1 << b) + 1) // 2 if b else 0


def pack_varint(value: int) -> bytes:
    """`value` (0 <= value < 2**64) as a minimal unsigned LEB128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int, limit: int) -> tuple[int, int] | None:
    """(value, length) of the LEB128 varint at `pos`, leniently (non-minimal and >= 2**64
    values are taken as they are); None if it does not end within 10 bytes before `limit`."""
    value = 0
    for i in range(VARINT_MAX_BYTES):
        if pos + i >= limit:
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    return None


def _encode(version: int, width: int, value: int) -> bytes:
    """`value` in a field of `width` (VARINT: a varint) of `version`'s layout, masked to fit."""
    if width == VARINT:
        return pack_varint(value & ((1 << 64) - 1))
    return (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


@dataclass
class RecordLayout:
    """A record as far as it could be parsed, and where its section lies."""

    index: int
    # name_len, dtype, ndim, encoding, size, crc, and for codebook records k, b, E, (K), C, G
    # (and in version 3 coding_flags, scale_axis, TC, TG)
    fields: dict[str, Field] = field(default_factory=dict)
    dims: list[Field] = field(default_factory=list)
    name_offset: int | None = None
    name_size: int = 0
    section_offset: int | None = None  # None if the header ends before the section size
    version: int = 2  # whose record fields these are (1, 2 or 3)
    planes: list[tuple[int, int, int]] = field(default_factory=list)  # version 5: (mode, T, D) per byte plane
    planes_span: tuple[int, int] | None = None  # where the plane fields lie in the header

    def value(self, name: str) -> int | None:
        """The value of field `name`, None if it was not parsed."""
        f = self.fields.get(name)
        return None if f is None else f.value

    @property
    def section_size(self) -> int | None:
        return self.value("size")

    @property
    def numel(self) -> int:
        return int(np.prod([d.value for d in self.dims], dtype=object)) if self.dims else 1

    @property
    def coding_flags(self) -> int:
        """The version-3 flags byte (0 for versions 1 and 2, or if not parsed)."""
        return self.value("coding_flags") or 0

    def coder(self, part: str) -> str:
        """"rans" or "huffman": the coder of the table or stream `part` (code_* or gap_*)."""
        bit = CODE_RANS if part.startswith("code") else GAP_RANS
        return "rans" if self.coding_flags & bit else "huffman"

    def part_sizes(self) -> list[tuple[str, int]] | None:
        """(part, size) of a codebook section, in order (`PARTS`); None if not a codebook
        record or its fields are missing. Versions 1 and 2: float32 codebook, no scales,
        Huffman tables; version 3: as its flags, scale axis, TC and TG say."""
        k, b, c, g = (self.value(n) for n in ("k", "b", "C", "G"))
        if self.value("encoding") != 1 or None in (k, b, c, g) or b > 16:
            return None
        if self.version != 3:
            return list(zip(PARTS, (4 * k, 0, *huffman_table_sizes(k, b), c, g)))
        flags, axis, tc, tg = (self.value(n) for n in ("coding_flags", "scale_axis", "TC", "TG"))
        if None in (flags, axis, tc, tg):
            return None
        scales = self.dims[axis - 1].value * (2 if flags & SCALE_F16 else 4) if 0 < axis <= len(self.dims) else 0
        entries = k * (2 if flags & CODEBOOK_F16 else 4)
        if flags & CODEBOOK_PLANES and self.planes:
            entries = sum(k if mode == 0 else t + d for mode, t, d in self.planes)
        return list(zip(PARTS, (entries, scales, tc, tg, c, g)))

    def parts(self) -> dict[str, tuple[int, int]]:
        """{part: (offset, size)} of a codebook section: codebook, scales, code_table,
        gap_table, code_stream, gap_stream; only for parts that lie inside the declared
        section. A dense record (b = 0) has an empty gap table and gap stream."""
        sizes = self.part_sizes()
        if sizes is None or self.section_offset is None:
            return {}
        parts, pos, end = {}, self.section_offset, self.section_offset + (self.section_size or 0)
        for name, size in sizes:
            if pos + size > end:
                break
            parts[name] = (pos, size)
            pos += size
        return parts


@dataclass
class Layout:
    """Where everything is in a (possibly damaged) .dzip file; see `parse_layout`."""

    size: int  # file size
    fields: list[Field]  # every numeric field, in file order (preamble, count, records, crc/trailer)
    records: list[RecordLayout]
    version: int | None  # the preamble's version; None if there is no whole preamble
    body: tuple[int, int] | None  # [start, end) of the header (record count and records)
    sections_end: int  # where the sections must end: the file's end (v1), the body's start (v2)
    complete: bool  # the header parsed exactly: all N records, ending at the body's end

    @property
    def layout_version(self) -> int:
        """1 for a version-1 file; every other version is framed as version 2 (and 3) are."""
        return 1 if self.version == 1 else 2

    @property
    def record_version(self) -> int:
        """Whose record fields the header holds: 1, 2 or 3 (version 4's are 3's; an unknown version: 2's)."""
        return _record_fields_of(self.version)

    def field(self, name: str) -> Field | None:
        """The first field called `name` (header_size, reserved, count, body_size, header_crc...)."""
        return next((f for f in self.fields if f.name == name), None)

    @property
    def size_field(self) -> Field | None:
        """The field that holds the header's size: header_size (v1) or the trailer's body_size (v2)."""
        return self.field("header_size" if self.layout_version == 1 else "body_size")

    def sections(self) -> list[tuple[RecordLayout, int, int]]:
        """(record, offset, size) of each section that lies wholly where sections may lie."""
        return [
            (r, r.section_offset, r.section_size)
            for r in self.records
            if r.section_offset is not None and r.section_offset + r.section_size <= self.sections_end
        ]

    def boundaries(self) -> list[int]:
        """Offsets where a field, record, section, section part or the header starts, and the file end."""
        points = {f.offset for f in self.fields} | {self.size}
        if self.body is not None:
            points |= set(self.body)
        for r in self.records:
            if r.name_offset is not None:
                points.add(r.name_offset)
            if r.section_offset is not None:
                points.add(r.section_offset)
            points |= {offset for offset, _ in r.parts().values()}
        return sorted(p for p in points if 0 <= p <= self.size)


def _record_fields_of(version: int | None) -> int:
    """The version whose record fields a file of `version` has: version 4 adds only a coding
    flag (significance-coded positions) to version 3's fields; an unknown version, 2's."""
    return 3 if version in (4, 5, 6) else version if version in (1, 2, 3) else 2


def parse_layout(data: bytes) -> Layout:
    """Parse the layout of `data` following docs/FORMAT.md, as far as the bytes allow.

    Never raises. Version 1: the header is bytes 16 .. 16 + H (H from the preamble),
    clipped to the file; the sections follow its crc32. Versions 2 and 3 (and any version
    other than 1, with version 2's records): the header body is the H bytes before the
    8-byte trailer (H from the trailer), none if they do not fit after the preamble; the
    sections start at byte 16.
    Fields that do not fit in the header are left out and records stop there. Section
    offsets follow the record sizes; `Layout.sections()` keeps those that fit.
    """
    data = bytes(data)
    n = len(data)
    fields: list[Field] = []
    records: list[RecordLayout] = []
    if n < PREAMBLE_SIZE:
        return Layout(n, fields, records, None, None, n, False)

    def number(name: str, offset: int, width: int, record: int | None = None) -> Field:
        return Field(name, offset, width, int.from_bytes(data[offset : offset + width], "little"), record)

    version = int.from_bytes(data[8:10], "little")
    v = 1 if version == 1 else 2  # the framing
    rv = _record_fields_of(version)  # the record fields
    fields += [number("version", 8, 2), number("flags", 10, 2), number("header_size" if v == 1 else "reserved", 12, 4)]
    tail: list[Field] = []
    if v == 1:
        start = PREAMBLE_SIZE
        end = start + fields[-1].value
        body = (start, end)
        sections_start, sections_end = end + 4, n
        if end + 4 <= n:
            tail.append(number("header_crc", end, 4))
    elif n >= PREAMBLE_SIZE + TRAILER_SIZE:
        tail = [number("body_size", n - TRAILER_SIZE, 4), number("header_crc", n - 4, 4)]
        end = n - TRAILER_SIZE
        start = end - tail[0].value
        body = (start, end) if start >= PREAMBLE_SIZE else None
        sections_start, sections_end = PREAMBLE_SIZE, start if body else end
    else:
        body, sections_start, sections_end = None, PREAMBLE_SIZE, n
    complete = False
    if body is not None:
        limit = min(body[1], n)
        pos = body[0]

        def take(name: str, width: int, record: RecordLayout | None) -> Field | None:
            nonlocal pos
            index = None if record is None else record.index
            if width == VARINT:
                read = _read_varint(data, pos, limit)
                if read is None:
                    return None
                f = Field(name, pos, read[1], read[0], index, varint=True)
            else:
                if pos + width > limit:
                    return None
                f = number(name, pos, width, index)
            pos += f.width
            fields.append(f)
            if record is not None:
                if name == "dim":
                    record.dims.append(f)
                else:
                    record.fields[name] = f
            return f

        count = take("count", _COUNT_WIDTH[v], None)
        if count is not None:
            complete = True
            for index in range(count.value):
                record = RecordLayout(index, version=rv)
                records.append(record)
                name_len = take("name_len", 2, record)
                if name_len is None or pos + name_len.value > limit:
                    complete = False
                    break
                record.name_offset, record.name_size = pos, name_len.value
                pos += name_len.value
                if take("dtype", 1, record) is None or (ndim := take("ndim", 1, record)) is None:
                    complete = False
                    break
                if any(take("dim", 4, record) is None for _ in range(ndim.value)):
                    complete = False
                    break
                if None in (take("encoding", 1, record), take("size", 4 if v == 1 else VARINT, record), take("crc", 4, record)):
                    complete = False
                    break
                if record.value("encoding") == 1 and any(take(name, w, record) is None for name, w in _PARAMS[rv]):
                    complete = False
                    break
                width = 0
                if version in (5, 6) and record.value("encoding") == ENCODING_PLANES:
                    width = _ITEMSIZE.get(record.value("dtype"), 0)
                elif version in (5, 6) and record.value("encoding") == 1 and record.coding_flags & CODEBOOK_PLANES:
                    width = 2 if record.coding_flags & CODEBOOK_F16 else 4
                start = pos
                for j in range(width):
                    mode = take(f"plane{j}_mode", 1, record)
                    if mode is None:
                        break
                    sizes = (0, 0) if mode.value == 0 else tuple(take(f"plane{j}_{n}", VARINT, record) for n in ("T", "D"))
                    if None in sizes:
                        break
                    record.planes.append((mode.value, *(f if isinstance(f, int) else f.value for f in sizes)))
                if width:
                    record.planes_span = (start, pos)
                if len(record.planes) < width:
                    complete = False
                    break
            complete = complete and pos == body[1]
    fields += tail
    offset = sections_start
    for record in records:
        if record.section_size is None:
            break
        record.section_offset = offset
        offset += record.section_size
    return Layout(n, fields, records, version, body, sections_end, complete)


def recompute_crcs(data: bytes) -> bytes:
    """`data` with every section crc32 and then the header crc32 rewritten to match.

    Section positions come from the record sizes (see `parse_layout`); a section that does
    not fit, or a header crc32 that does not, is left as it is.
    """
    layout = parse_layout(data)
    out = bytearray(data)
    for record, offset, size in layout.sections():
        crc = record.fields.get("crc")
        if crc is not None:
            out[crc.offset : crc.offset + 4] = struct.pack("<I", zlib.crc32(out[offset : offset + size]))
    header_crc = layout.field("header_crc")
    if header_crc is not None and layout.body is not None:
        start, end = layout.body
        if layout.layout_version == 1:
            value = zlib.crc32(out[:end])
        else:
            value = zlib.crc32(out[start:end], zlib.crc32(out[:PREAMBLE_SIZE]))
        out[header_crc.offset : header_crc.offset + 4] = struct.pack("<I", value)
    return bytes(out)


def _put(data: bytes, f: Field, value: int, encoded: bytes | None = None) -> bytes:
    """`data` with field `f` set to `value` (masked to fit). A varint is re-encoded (or
    written as `encoded`, which may be malformed): when its length changes, what follows
    shifts and the trailer's H (a varint lies in a version-2 header body) follows the body.
    Several fields are put from the last to the first, so that each offset still holds."""
    if not f.varint:
        return data[: f.offset] + (value & f.max).to_bytes(f.width, "little") + data[f.offset + f.width :]
    new = pack_varint(value & f.max) if encoded is None else encoded
    out = data[: f.offset] + new + data[f.offset + f.width :]
    delta = len(new) - f.width
    if delta and len(out) >= PREAMBLE_SIZE + TRAILER_SIZE:
        at = len(out) - TRAILER_SIZE
        body_size = (int.from_bytes(out[at : at + 4], "little") + delta) & 0xFFFFFFFF
        out = out[:at] + body_size.to_bytes(4, "little") + out[at + 4 :]
    return out


def _malformed_varint(value: int, rng: np.random.Generator) -> bytes:
    """An encoding of about `value` that the reader must refuse: non-minimal (padded with
    0x80 groups and a final 0x00), 11 or more bytes long, or 10 bytes worth 2**64 or more."""
    minimal = bytearray(pack_varint(value & ((1 << 64) - 1)))
    choice = rng.integers(3)
    if choice == 0:  # padded: still <= 10 bytes when it can be, so only minimality fails
        pad = int(rng.integers(1, max(2, VARINT_MAX_BYTES - len(minimal) + 1)))
        minimal[-1] |= 0x80
        return bytes(minimal) + b"\x80" * (pad - 1) + b"\x00"
    if choice == 1:  # too long: 11 to 12 bytes
        minimal[-1] |= 0x80
        return bytes(minimal) + b"\x80" * (VARINT_MAX_BYTES - len(minimal) + int(rng.integers(2))) + b"\x01"
    low = value & ((1 << 63) - 1)  # 10 bytes: the top byte holds bits 63.. and sets one above 63
    return bytes((low >> (7 * i)) & 0x7F | 0x80 for i in range(9)) + bytes([int(rng.integers(2, 128))])


def _replace(data: bytes, start: int, end: int, new: bytes) -> tuple[bytes, Callable[[Field], Field]]:
    """`data` with bytes [start, end) replaced by `new`, and a function that moves a field of
    `data` to where it lies in the result: fields from `end` on shift by the size change
    (in version 2 the header follows the sections, so a section edit moves it)."""
    delta = len(new) - (end - start)

    def moved(f: Field) -> Field:
        return f if f.offset < end else dataclasses.replace(f, offset=f.offset + delta)

    return data[:start] + new + data[end:], moved

# ---------------------------------------------------------------- byte-level mutators


def _position(data: bytes, rng: np.random.Generator, end_inclusive: bool = False) -> int:
    """A random offset; a third of the time a structural boundary (field, section, part)."""
    top = len(data) + (1 if end_inclusive else 0)
    if top <= 0:
        return 0
    if rng.random() < 1 / 3:
        points = [p for p in parse_layout(data).boundaries() if p < top]
        if points:
            return int(points[rng.integers(len(points))])
    return int(rng.integers(top))


def _length(rng: np.random.Generator, most: int) -> int:
    """A run length in 1..most, biased towards short runs."""
    return int(min(most, 1 + rng.geometric(0.15))) if most >= 1 else 0


def bit_flip(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip 1 to 8 random bits."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = _position(data, rng)
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def byte_overwrite(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite 1 to 4 bytes, or a run of up to ~16, with random or boundary bytes."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        i = _position(data, rng)
        run = 1 if rng.random() < 0.7 else _length(rng, len(data) - i)
        for j in range(i, i + run):
            if rng.random() < 0.5:
                out[j] = _INTERESTING_BYTES[rng.integers(len(_INTERESTING_BYTES))]
            else:
                out[j] = int(rng.integers(256))
    return bytes(out)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    """Cut the file at a random offset (often a field or section boundary)."""
    if not data:
        return data
    return data[: _position(data, rng)]


def insert(data: bytes, rng: np.random.Generator) -> bytes:
    """Insert 1..~16 random (or zero) bytes at a random offset, the end included."""
    i = _position(data, rng, end_inclusive=True)
    n = _length(rng, 64)
    chunk = bytes(n) if rng.random() < 0.25 else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return data[:i] + chunk + data[i:]


def delete(data: bytes, rng: np.random.Generator) -> bytes:
    """Delete a run of bytes starting at a random offset."""
    if not data:
        return data
    i = _position(data, rng)
    return data[:i] + data[i + _length(rng, len(data) - i) :]


def duplicate(data: bytes, rng: np.random.Generator) -> bytes:
    """Copy a run of bytes and insert it at another random offset (often right after itself)."""
    if not data:
        return data
    i = _position(data, rng)
    chunk = data[i : i + _length(rng, len(data) - i)]
    j = i + len(chunk) if rng.random() < 0.5 else _position(data, rng, end_inclusive=True)
    return data[:j] + chunk + data[j:]


def _donor_range(rng: np.random.Generator) -> bytes:
    """A whole section, or a random run, of a random seed file."""
    seeds = _seed_files()
    donor = seeds[rng.integers(len(seeds))][1]
    sections = parse_layout(donor).sections()
    if sections and rng.random() < 0.5:
        _, offset, size = sections[rng.integers(len(sections))]
        return donor[offset : offset + size]
    i = int(rng.integers(len(donor)))
    return donor[i : i + _length(rng, min(4096, len(donor) - i))]


def splice(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite (or insert) a section or a run of bytes taken from a seed file."""
    chunk = _donor_range(rng)
    i = _position(data, rng, end_inclusive=True)
    if rng.random() < 0.5:
        return data[:i] + chunk + data[i + len(chunk) :]
    return data[:i] + chunk + data[i:]


def _with_crcs(mutator: Callable[[bytes, np.random.Generator], bytes]):
    def mutate(data: bytes, rng: np.random.Generator) -> bytes:
        return recompute_crcs(mutator(data, rng))

    mutate.__name__ = f"{mutator.__name__}_crc"
    mutate.__doc__ = f"{mutator.__doc__.rstrip('.')}, then recompute the checksums."
    return mutate


# ---------------------------------------------------------------- structure-aware mutators


_LIMITS = {
    "version": (0, 1, 2, 3, 4),
    "flags": (1,),
    "reserved": (1,),
    "name_len": (1024, 1025),
    "dtype": (0, 1, 2, 3, 4, 5, 8, 9, 10, 11),
    "ndim": (0, 8, 9),
    "encoding": (0, 1, 2, 3, 4, 5),
    "k": (4095, 4096, 4097),
    "b": (0, 1, 8, 12, 13, 16),
    "coding_flags": (0, 1, 2, 3, 4, 8, 12, 15, 16, 0x80, 0xFF),
    "scale_axis": (0, 1, 2, 8, 9, 255),
}


def _candidates(f: Field, layout: Layout, rng: np.random.Generator) -> list[int]:
    """Boundary values for field `f`: 0, 1, max, max-1, old+-1, 2**31, 2**32-1, random, limits,
    and values at the edge of the checks that tie a record's fields together."""
    values = [0, 1, f.max, f.max - 1, f.value + 1, f.value - 1, 1 << 31, (1 << 32) - 1, int(rng.integers(f.max, dtype=np.uint64, endpoint=True))]
    values += [1 << 16, (1 << 16) - 1, f.value * 2, f.value // 2, f.value + 8, f.value - 8, 1 << 32, 1 << 40, 1 << 63]
    values += list(_LIMITS.get(f.name, ()))
    if f.name in ("header_size", "body_size"):
        room = layout.size - PREAMBLE_SIZE - (4 if f.name == "header_size" else TRAILER_SIZE)
        values += [room, room + 1, 64 << 20, (64 << 20) + 1]
    if f.record is not None:
        record = layout.records[f.record]
        numel, b, k = record.numel, record.value("b") or 0, record.value("k") or 0
        entries, code, gap = (record.value(n) or 0 for n in ("E", "C", "G"))
        if f.name == "E":
            # E <= numel, E <= 8 C (and 8 G if sparse; Huffman only), numel <= (E + 1) 2^b - 1.
            reach = -(-(numel + 1) // (1 << min(b, 16))) - 1
            values += [numel, numel + 1, 8 * code, 8 * code + 1, 8 * gap, 8 * gap + 1, reach, reach - 1]
        if f.name == "K":
            values += [entries, entries - 1, entries + 1, 0]
        if f.name in ("C", "G"):
            values += [-(-entries // 8), -(-entries // 8) - 1]
        if f.name in ("TC", "TG"):  # a Huffman table has exactly its size; a dense record no gap table
            values += list(huffman_table_sizes(k, min(b, 16))) + [f.value + 1, f.value - 1, 0, 1]
        if f.name == "scale_axis":
            values += [len(record.dims), len(record.dims) + 1]
        if f.name == "dim":
            values += [1 << 20, 1 << 30, f.value + (1 << min(b, 16))]
    return [v for v in values if 0 <= v <= f.max and v != f.value]


_CHECKSUMS = ("crc", "header_crc")


def field_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Set one numeric field (header or body size, record count, name length, dtype, ndim, a
    dim, encoding, section size, k, b, coding flags, scale axis, E, K, C, G, TC, TG; rarely
    version, flags or the reserved word) to a boundary value, then recompute the checksums."""
    layout = parse_layout(data)
    fields = [f for f in layout.fields if f.name not in (*_CHECKSUMS, "version", "flags", "reserved")]
    if not fields or rng.random() < 0.02:
        fields = [f for f in layout.fields if f.name not in _CHECKSUMS] or fields
    if not fields:
        return byte_overwrite(data, rng)
    f = fields[rng.integers(len(fields))]
    values = _candidates(f, layout, rng)
    value = values[rng.integers(len(values))]
    if f.varint and rng.random() < 0.15:  # a varint the reader must refuse, behind valid crcs
        return recompute_crcs(_put(data, f, value, _malformed_varint(f.value if rng.random() < 0.5 else value, rng)))
    return recompute_crcs(_put(data, f, value))


def _codebook_records(layout: Layout) -> list[RecordLayout]:
    """Codebook records whose six section parts all lie where the sections may lie."""
    return [r for r in layout.records if len(r.parts()) == len(PARTS) and r.section_offset + r.section_size <= layout.sections_end]


def _rewrite(data: bytes, record: RecordLayout, section: bytes | None = None, values: dict | None = None) -> bytes:
    """`data` with `record`'s section replaced by `section` (None: kept) and its fields set to
    `values` ({field name: value}, "dims": a list of as many dims), then the checksums.

    The section size follows the new section; the fields are put last to first, so that a
    varint that changes length moves only what follows it (the trailer's H follows too)."""
    values = dict(values or {})
    def moved(f: Field) -> Field:  # no section change: nothing moves
        return f

    if section is not None:
        start = record.section_offset
        data, moved = _replace(data, start, start + record.section_size, section)
        values["size"] = len(section)
    fields = [(record.fields[n], v) for n, v in values.items() if n in record.fields]
    fields += list(zip(record.dims, values.get("dims", [])))
    for f, value in sorted(fields, key=lambda fv: fv[0].offset, reverse=True):
        data = _put(data, moved(f), value)
    return recompute_crcs(data)


def _with_parts(data: bytes, record: RecordLayout, parts: dict[str, bytes], values: dict | None = None) -> bytes:
    """`record`'s codebook section with `parts` replaced; TC, TG (version 3), C, G and the
    section size follow the new parts' lengths, `values` sets other fields (flags, E...)."""
    current = {name: data[offset : offset + size] for name, (offset, size) in record.parts().items()}
    current.update(parts)
    values = dict(values or {})
    for part, name in _PART_SIZE.items():
        values.setdefault(name, len(current[part]))
    return _rewrite(data, record, b"".join(current[p] for p in PARTS), values)


def table_flip(data: bytes, rng: np.random.Generator) -> bytes:
    """Change a table in place, then recompute the checksums. A Huffman code-length table:
    flip bits or set a length nibble to 0, 1, 15 or old+-1. A rANS frequency table: flip
    bits, set the precision byte to a boundary (0, 16, 17, 0xFF...) or a token byte to a
    varint boundary (0x00, 0x7F, 0x80...) or old+-1 (a frequency or run one off)."""
    records = _codebook_records(parse_layout(data))
    tables = [(r, p) for r in records for p in ("code_table", "gap_table") if r.parts()[p][1]]
    if not tables:
        return field_edit(data, rng)
    record, part = tables[rng.integers(len(tables))]
    offset, size = record.parts()[part]
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        i = offset + int(rng.integers(size))
        if rng.random() < 0.4:
            out[i] ^= 1 << int(rng.integers(8))
        elif record.coder(part) == "rans":
            if i == offset or rng.random() < 0.2:
                i = offset
                out[i] = int((0, 1, 16, 17, 0x7F, 0xFE, 0xFF, out[i] + 1, out[i] - 1)[rng.integers(9)]) & 0xFF
            else:
                out[i] = int((0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF, out[i] + 1, out[i] - 1, out[i] + 2)[rng.integers(10)]) & 0xFF
        else:
            high = rng.random() < 0.5
            old = out[i] >> 4 if high else out[i] & 15
            new = int((0, 1, 15, old + 1, old - 1)[rng.integers(5)]) & 15
            out[i] = (new << 4 | out[i] & 15) if high else (out[i] & 0xF0 | new)
    return recompute_crcs(bytes(out))


def table_resize(data: bytes, rng: np.random.Generator) -> bytes:
    """Grow, shrink or replace a table of a version-3 record (rANS, or Huffman given the
    wrong size) and fix TC or TG, the section size and the checksums: a rANS table is
    self-delimiting, so its declared size and its own end must agree. Replacements: the
    empty table 0xFF, nothing, or another record's table (another alphabet)."""
    layout = parse_layout(data)
    records = [r for r in _codebook_records(layout) if r.version == 3]
    if not records:
        return stream_resize(data, rng)
    record = records[rng.integers(len(records))]
    part = "code_table" if record.value("b") == 0 or rng.random() < 0.5 else "gap_table"
    offset, size = record.parts()[part]
    table = data[offset : offset + size]
    choice = rng.random()
    if choice < 0.35 and size:
        i = int(rng.integers(size))
        table = table[:i] + table[i + int(rng.integers(1, 4)) :]
    elif choice < 0.7:
        i = int(rng.integers(size + 1))
        chunk = [bytes([int(rng.integers(256))]), b"\x00", b"\x01", b"\x02", b"\x80\x01", b"\x03\x00"][rng.integers(6)]
        table = table[:i] + chunk + table[i:]
    elif choice < 0.85:
        table = [b"\xff", b"", b"\x00", b"\x00\x00", b"\x10"][rng.integers(5)]
    else:
        donors = [(d, r, p) for _, d in _seed_files() for r in _codebook_records(parse_layout(d)) for p in ("code_table", "gap_table")
                  if r.version == 3 and r.coder(p) == "rans" and r.parts()[p][1]]  # fmt: skip
        donor, source, donor_part = donors[rng.integers(len(donors))]
        o, n = source.parts()[donor_part]
        table = donor[o : o + n]
    return _with_parts(data, record, {part: table})


def stream_flip(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip 1 to 8 bits of a code or gap stream (the padding bits included), then recompute
    the checksums."""
    records = _codebook_records(parse_layout(data))
    streams = [r.parts()[p] for r in records for p in ("code_stream", "gap_stream") if r.parts()[p][1]]
    if not streams:
        return field_edit(data, rng)
    offset, size = streams[rng.integers(len(streams))]
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        # Half the flips hit the last byte, where the padding and the final codes are (and
        # a rANS stream's last word; its head, the state, is at the start).
        i = offset + size - 1 if rng.random() < 0.5 else offset + int(rng.integers(size))
        out[i] ^= 1 << int(rng.integers(8))
    return recompute_crcs(bytes(out))


def stream_resize(data: bytes, rng: np.random.Generator) -> bytes:
    """Grow or shrink a code or gap stream by a few bytes and fix C or G, the section size
    and the checksums, so that the file stays consistent up to the stream's decoder."""
    layout = parse_layout(data)
    records = _codebook_records(layout)
    if not records:
        return field_edit(data, rng)
    record = records[rng.integers(len(records))]
    part, size_field = ("code_stream", "C") if rng.random() < 0.5 else ("gap_stream", "G")
    offset, size = record.parts()[part]
    delta = int((1, 2, 3, 4, -1, -2, -3, -4)[rng.integers(8)]) if rng.random() < 0.8 else int(rng.integers(-size, 64))
    delta = max(delta, -size) or 1
    i = offset + int(rng.integers(size + 1))
    if delta > 0:
        chunk = bytes(delta) if rng.random() < 0.5 else rng.integers(0, 256, delta, dtype=np.uint8).tobytes()
        data, moved = _replace(data, i, i, chunk)
    else:
        i = min(i, offset + size + delta)
        data, moved = _replace(data, i, i - delta, b"")
    # Version 1: the fields precede the section and stay put; versions 2 and 3: they move
    # with the header. C or G follows the section size: put first, a varint's new length
    # moves nothing before it.
    data = _put(data, moved(record.fields[size_field]), size + delta)
    data = _put(data, moved(record.fields["size"]), record.section_size + delta)
    return recompute_crcs(data)


def _decoded_streams(data: bytes, record: RecordLayout):
    """(code symbols, gap symbols or None for a dense record) of an undamaged record, or None."""
    from deepzip.codec.streams import ANS, HUFFMAN, decode_stream

    k, b, entries = record.value("k"), record.value("b"), record.value("E")
    parts = {name: data[o : o + n] for name, (o, n) in record.parts().items()}
    if entries > 1 << 20 or b > 12 or not 1 <= k <= 4096:
        return None
    try:
        streams = []
        for part, alphabet in (("code", k + 1), ("gap", 1 << b)):
            if part == "gap" and b == 0:
                streams.append(None)
                continue
            coder = ANS if record.coder(f"{part}_table") == "rans" else HUFFMAN
            streams.append(decode_stream(coder, parts[f"{part}_table"], parts[f"{part}_stream"], alphabet, entries))
    except (FormatError, ValueError):
        return None
    return streams


def stream_recode(data: bytes, rng: np.random.Generator) -> bytes:
    """Decode a record's code and gap streams, change their symbols, and code them again
    (a version-3 record with the coder of either kind, its flags following), fixing the
    tables, sizes, E, K and checksums: the streams are valid, what they say need not be.

    Changes: a code set to a random symbol, the filler k, or (with an alphabet one too large)
    k + 1; a gap set to a random or the widest symbol; every gap the widest or the
    narrowest; an entry added or dropped (K following, or not); or, in version 3, none but
    the coder of each stream swapped (a valid file that must decode as before)."""
    from deepzip.codec.streams import ANS, HUFFMAN, encode_stream

    layout = parse_layout(data)
    records = [r for r in _codebook_records(layout) if r.value("E")]
    decoded = None
    while records and decoded is None:
        record = records.pop(int(rng.integers(len(records))))
        decoded = _decoded_streams(data, record)
    if decoded is None:
        return stream_flip(data, rng)
    codes, gaps = decoded[0].astype(np.int64), None if decoded[1] is None else decoded[1].astype(np.int64)
    k, b = record.value("k"), record.value("b")
    alphabet = [k + 1, 1 << b]
    swap = record.version == 3 and rng.random() < 0.25  # only the coders change
    options = (0, 1, 2, 3, 4, 5) if gaps is not None else (0, 1, 5)  # a dense record has no gaps
    choice = -1 if swap else int(options[rng.integers(len(options))])
    i = int(rng.integers(codes.size))
    if choice == 0:
        codes[i] = int(rng.integers(k + 1))
    elif choice == 1:
        codes[i] = k if rng.random() < 0.7 else k + 1
        alphabet[0] = k + 2 if codes[i] > k else alphabet[0]
    elif choice in (2, 3) and gaps is not None:
        gaps[i] = (1 << b) - 1 if choice == 2 else int(rng.integers(1 << b))
    elif choice == 4 and gaps is not None:
        gaps[:] = (1 << b) - 1 if rng.random() < 0.5 else 0
    elif choice == 5:
        grow = rng.random() < 0.5
        codes = np.append(codes, int(rng.integers(k + 1))) if grow else codes[:-1]
        if gaps is not None:
            gaps = np.append(gaps, int(rng.integers(1 << b))) if grow else gaps[:-1]
    coders = [HUFFMAN, ANS] if record.version == 3 else [HUFFMAN]
    flags = record.coding_flags
    parts = {}
    for n, (part, symbols, bit, compact) in enumerate((("code", codes, CODE_RANS, CODE_COMPACT), ("gap", gaps, GAP_RANS, GAP_COMPACT))):
        if symbols is None:
            continue
        coder = coders[rng.integers(len(coders))] if rng.random() < 0.5 else (ANS if flags & bit else HUFFMAN)
        if swap:
            coder = HUFFMAN if flags & bit else ANS
        if record.version != 3:
            coder = HUFFMAN
        # Packed Huffman tables, readable in every version (the compact flag is cleared below).
        stream = encode_stream(symbols.astype(np.uint16), alphabet[n], (coder,), compact=False)
        table = stream.table
        if coder == HUFFMAN and alphabet[n] > [k + 1, 1 << b][n]:
            table = table[: huffman_table_sizes(k, b)[n]]  # the declared alphabet's table: damage
        parts[f"{part}_table"], parts[f"{part}_stream"] = table, stream.data
        flags = (flags | bit if coder == ANS else flags & ~bit) & ~compact
    values = {"E": int(codes.size)}
    if record.value("K") is not None and (choice != 5 or rng.random() < 0.7):
        values["K"] = int(np.count_nonzero(codes != k))
    if record.version == 3:
        values["coding_flags"] = flags
    return _with_parts(data, record, parts, values)


def _float_bytes(values: np.ndarray, half: bool) -> bytes:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, dtype=np.float32).astype("<f2" if half else "<f4").tobytes()


def coding_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Edit a version-3 record's coding flags or scale axis, then recompute the checksums:
    a flag bit flipped or the axis set to a boundary (the section left as it was, so that
    the sizes no longer add up or the parts are misread); or, with the section following,
    the codebook converted between float32 and float16, scales added (float32 or float16,
    negative, zero, infinite or NaN ones among them) along a dim, dropped, or converted."""
    layout = parse_layout(data)
    records = [r for r in _codebook_records(layout) if r.version == 3]
    if not records:
        return field_edit(data, rng)
    record = records[rng.integers(len(records))]
    flags, axis = record.coding_flags, record.value("scale_axis")
    parts = {name: data[o : o + n] for name, (o, n) in record.parts().items()}
    choice = int(rng.integers(6))
    if choice == 0:
        return _rewrite(data, record, None, {"coding_flags": flags ^ (1 << int(rng.integers(8)))})
    if choice == 1:
        values = (0, 1, len(record.dims), len(record.dims) + 1, 255, int(rng.integers(256)))
        return _rewrite(data, record, None, {"scale_axis": int(values[rng.integers(len(values))])})
    if choice == 2 and not flags & CODEBOOK_PLANES:  # (byte-plane coded entries are no float array)
        half = bool(flags & CODEBOOK_F16)
        codebook = np.frombuffer(parts["codebook"], "<f2" if half else "<f4")
        parts["codebook"] = _float_bytes(codebook, not half)
        return _with_parts(data, record, parts, {"coding_flags": flags ^ CODEBOOK_F16})
    dims = [d.value for d in record.dims]
    if choice == 3 and not axis and dims and max(dims) <= 1 << 16:
        new_axis = int(rng.integers(len(dims)))
        scales = rng.normal(size=dims[new_axis]).astype(np.float32) * 4
        if scales.size and rng.random() < 0.5:
            scales[int(rng.integers(scales.size))] = (0.0, -1.0, np.inf, -np.inf, np.nan, 1e-30, 7e4)[rng.integers(7)]
        half = rng.random() < 0.5
        parts["scales"] = _float_bytes(scales, half)
        values = {"scale_axis": new_axis + 1, "coding_flags": flags | SCALE_F16 if half else flags & ~SCALE_F16}
        return _with_parts(data, record, parts, values)
    if choice == 4 and axis:
        parts["scales"] = b""
        return _with_parts(data, record, parts, {"scale_axis": 0, "coding_flags": flags & ~SCALE_F16})
    if axis:
        half = bool(flags & SCALE_F16)
        parts["scales"] = _float_bytes(np.frombuffer(parts["scales"], "<f2" if half else "<f4"), not half)
        return _with_parts(data, record, parts, {"coding_flags": flags ^ SCALE_F16})
    return _rewrite(data, record, None, {"coding_flags": flags ^ (1 << int(rng.integers(4)))})


def _xz_block_header(section: bytes) -> tuple[int, int] | None:
    """(offset, size) of the first block header of an .xz stream, or None."""
    if len(section) < 13 or section[:6] != b"\xfd7zXZ\x00" or section[12] == 0:
        return None
    size = (section[12] + 1) * 4
    return (12, size) if 12 + size <= len(section) else None


def _xz_with_dictionary(section: bytes, value: int) -> bytes:
    """`section` with the first LZMA2 filter's dictionary-size byte set to `value` and its
    block header's crc32 fixed (so liblzma reads the new size: 40 is 4 GiB - 1)."""
    where = _xz_block_header(section)
    if where is None:
        return section
    offset, size = where
    block = bytearray(section[offset : offset + size])
    at = block.find(b"\x21\x01", 2)  # filter flags: LZMA2's id, one property byte, then it
    if at < 0 or at + 2 >= size - 4:
        return section
    block[at + 2] = value & 0xFF
    block[-4:] = struct.pack("<I", zlib.crc32(bytes(block[:-4])))
    return section[:offset] + bytes(block) + section[offset + size :]


def xz_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Damage or replace an xz file section (a plain file record is first turned into one:
    its content xz-compressed, a random check type), fixing the section size and checksums.

    Bit flips (often in the block header, index or footer); a cut; bytes appended (stream
    padding, garbage, a second stream); a replacement (xz of other bytes, of the content
    with another check, .lzma or raw LZMA2 data, the plain content); the declared decoded
    size (the shape) off by one, 0, doubled or 2**32 - 1; the LZMA2 dictionary size in the
    block header set to a boundary with that header's crc32 fixed (40: 4 GiB); the
    encoding set to 3, so the xz bytes are a plain file's."""
    layout = parse_layout(data)
    fitting = [r for r, _, _ in layout.sections() if len(r.dims) == 1 and r.value("ndim") == 1]
    records = [r for r in fitting if r.value("encoding") == 4]
    values = {}
    if not records or rng.random() < 0.1:
        plain = [r for r in fitting if r.value("encoding") == 3]
        if not plain:
            return field_edit(data, rng)
        record = plain[rng.integers(len(plain))]
        content = data[record.section_offset : record.section_offset + record.section_size]
        check = (lzma.CHECK_CRC32, lzma.CHECK_NONE, lzma.CHECK_CRC64, lzma.CHECK_SHA256)[rng.integers(4)]
        section = lzma.compress(content, format=lzma.FORMAT_XZ, check=check, preset=int(rng.integers(7)))
        values = {"encoding": 4, "dims": [len(content)]}
        if rng.random() < 0.5:
            return _rewrite(data, record, section, values)
    else:
        record = records[rng.integers(len(records))]
        section = data[record.section_offset : record.section_offset + record.section_size]
    declared = values.get("dims", [record.dims[0].value])[0]
    try:
        content = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(section, max_length=1 << 20)
    except lzma.LZMAError:
        content = section
    choice = int(rng.integers(8))
    if choice == 0:
        out = bytearray(section)
        if out:
            block = _xz_block_header(section)
            for _ in range(int(rng.integers(1, 5))):
                spots = [0, 6, 7, len(out) - 12, len(out) - 2, len(out) - 1, int(rng.integers(len(out)))]
                if block is not None:
                    spots.append(block[0] + int(rng.integers(block[1])))
                i = int(spots[rng.integers(len(spots))]) % len(out)
                out[i] ^= 1 << int(rng.integers(8))
        section = bytes(out)
    elif choice == 1:
        section = section[: int(rng.integers(len(section) + 1))]
    elif choice == 2:
        tail = [b"\x00" * 4, b"\x00", rng.bytes(int(rng.integers(1, 9))), section, lzma.compress(b"", format=lzma.FORMAT_XZ)]
        section += tail[rng.integers(len(tail))]
    elif choice == 3:
        other = [
            lzma.compress(rng.bytes(len(content) % 500 + 1), format=lzma.FORMAT_XZ),
            lzma.compress(content, format=lzma.FORMAT_XZ, check=(lzma.CHECK_NONE, lzma.CHECK_CRC64, lzma.CHECK_SHA256)[rng.integers(3)]),
            lzma.compress(content, format=lzma.FORMAT_ALONE),
            lzma.compress(content, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]),
            lzma.compress(content[:-1] + b"!", format=lzma.FORMAT_XZ),
            content,
        ]
        section = other[rng.integers(len(other))]
    elif choice == 4:
        sizes = [declared + 1, declared - 1, 0, 2 * declared, (1 << 32) - 1, int(rng.integers(1 << 20))]
        values["dims"] = [int(sizes[rng.integers(len(sizes))]) & 0xFFFFFFFF]
    elif choice in (5, 6):
        dictionary = [0, 1, 18, 24, 35, 36, 37, 38, 39, 40, 41, 0xFF, int(rng.integers(256))]
        section = _xz_with_dictionary(section, int(dictionary[rng.integers(len(dictionary))]))
    else:
        values["encoding"] = 3
        if rng.random() < 0.7:
            values["dims"] = [len(section)]
    return _rewrite(data, record, section, values)


_SPLICE_FIELDS = ("TG", "TC", "G", "C", "K", "E", "scale_axis", "coding_flags", "b", "k", "size")


def section_splice(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace a codebook section by one from another record or seed file, carrying over
    its k, b, (coding flags, scale axis,) E, K, C, G, (TC, TG) and size but keeping this
    record's shape; recompute the checksums.

    A donor of another version lacks or adds fields: a K it lacks becomes E, version-3
    fields it lacks become those of Huffman tables with float32 entries and no scales."""
    layout = parse_layout(data)
    records = _codebook_records(layout)
    donors = []
    for _, donor in _seed_files():
        donor_layout = parse_layout(donor)
        donors += [(donor, r) for r in _codebook_records(donor_layout)]
    if not records or not donors:
        return field_edit(data, rng)
    target = records[rng.integers(len(records))]
    current = data[target.section_offset : target.section_offset + target.section_size]
    sections = [(donor[r.section_offset : r.section_offset + r.section_size], r) for donor, r in donors]
    sections = [(section, r) for section, r in sections if section != current] or sections
    section, source = sections[rng.integers(len(sections))]
    out, moved = _replace(data, target.section_offset, target.section_offset + target.section_size, section)
    tables = dict(zip(("TC", "TG"), huffman_table_sizes(source.value("k"), source.value("b"))))
    for name in _SPLICE_FIELDS:  # the last first: varints may change length
        if name in target.fields:
            if name in source.fields:
                value = source.value(name)
            else:
                value = {"K": source.value("E"), "coding_flags": 0, "scale_axis": 0, **tables}[name]
            out = _put(out, moved(target.fields[name]), value)
    return recompute_crcs(out)


_DIM_VALUES = (0, 1, 2, 3, 7, 1 << 16, (1 << 20), (1 << 20) + 1, 1 << 31, (1 << 32) - 2, (1 << 32) - 1)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 4096) + 1) if n % d == 0]


def _resize_header(data: bytes, layout: Layout, moved: Callable[[Field], Field], delta: int) -> bytes:
    """After the header grew by `delta` bytes: fix its size (v1 preamble, v2 trailer)."""
    size_field = layout.size_field
    if size_field is None:
        return data
    return _put(data, moved(size_field), size_field.value + delta)


def shape_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Give a record a new shape, then fix its ndim, the header size and the checksums.

    A third of the time with the same element count (a reshape, so a raw section still
    matches; a zero-size shape gets huge other dims), a third of the time one or two dims
    set to boundary values, else a new ndim (0..9) with boundary dims.
    """
    layout = parse_layout(data)
    records = [r for r in layout.records if "ndim" in r.fields and len(r.dims) == r.fields["ndim"].value]
    if not records or layout.version is None:
        return field_edit(data, rng)
    record = records[rng.integers(len(records))]
    old = [d.value for d in record.dims]
    numel = record.numel
    mode = rng.integers(3)

    def pick() -> int:
        return int(_DIM_VALUES[rng.integers(len(_DIM_VALUES))]) if rng.random() < 0.8 else int(rng.integers(1 << 32))

    if mode == 0 and numel == 0:
        dims = [pick() for _ in range(int(rng.integers(1, 9)))]
        dims[rng.integers(len(dims))] = 0
    elif mode == 0:
        dims = []
        rest = numel
        while rest > 1 and len(dims) < 7 and rng.random() < 0.7:
            divisors = _divisors(rest)
            d = int(divisors[rng.integers(len(divisors))])
            dims.append(d)
            rest //= d
        dims.append(rest)
        while len(dims) < 8 and rng.random() < 0.3:
            dims.insert(int(rng.integers(len(dims) + 1)), 1)
        dims = [int(d) for d in rng.permutation(dims)]
    elif mode == 1 and old:
        dims = list(old)
        for _ in range(int(rng.integers(1, 3))):
            dims[rng.integers(len(dims))] = pick()
    else:
        dims = [pick() for _ in range(int(rng.integers(0, 10)))]
    dims = [d & 0xFFFFFFFF for d in dims]  # a damaged shape's element count can pass 2**32
    if dims == old:
        dims = dims + [1] if len(dims) < 8 else dims[:-1]
    ndim = record.fields["ndim"]
    start = ndim.offset + 1
    data, moved = _replace(data, start, start + 4 * len(old), struct.pack(f"<{len(dims)}I", *dims))
    data = _put(data, moved(ndim), len(dims))
    data = _resize_header(data, layout, moved, 4 * (len(dims) - len(old)))
    return recompute_crcs(data)


def name_edit(data: bytes, rng: np.random.Generator) -> bytes:
    """Replace a tensor name by another record's name (a duplicate), an empty, 1025-byte,
    non-UTF-8 or random name; fix the name length, the header size and the checksums."""
    layout = parse_layout(data)
    records = [r for r in layout.records if r.name_offset is not None and "name_len" in r.fields]
    if not records or layout.version is None:
        return field_edit(data, rng)
    target = records[rng.integers(len(records))]
    others = [r for r in records if r is not target]
    choice = rng.integers(6)
    if choice <= 1 and others:
        source = others[rng.integers(len(others))]
        name = data[source.name_offset : source.name_offset + source.name_size]
    elif choice == 2:
        name = b""
    elif choice == 3:
        name = b"w" * 1025
    elif choice == 4:
        name = b"fc\xff\xfe" if rng.random() < 0.5 else b"\xc3"
    else:
        name = rng.integers(0, 256, _length(rng, 40), dtype=np.uint8).tobytes()
    data, moved = _replace(data, target.name_offset, target.name_offset + target.name_size, name)
    data = _put(data, moved(target.fields["name_len"]), len(name))
    data = _resize_header(data, layout, moved, len(name) - target.name_size)
    return recompute_crcs(data)


def relayout(data: bytes, version: int, replace: Mapping[int, tuple] | None = None) -> bytes | None:
    """`data` laid out as `version` (1, 2 or 3), every record and section kept; checksums recomputed.

    A version-2 or 3 record's K is dropped for version 1, and a version-1 record gets K = E
    (right only when it has no fillers); a dense record (b = 0) is invalid in version 1.
    To version 3 a record gets coding flags 0, no scales and the Huffman table sizes;
    from version 3 those fields are dropped (right only for such records). `replace` maps
    a record's index to (encoding, section, coding parameters or None) to store instead.
    None if the header does not parse whole or a section does not fit.
    """
    layout = parse_layout(data)
    if not layout.complete or len(layout.sections()) != len(layout.records):
        return None
    replace = replace or {}
    body = _encode(version, _COUNT_WIDTH[version], len(layout.records))
    sections = []
    for r, (_, offset, size) in zip(layout.records, layout.sections()):
        encoding, section, params = replace.get(r.index, (r.value("encoding"), data[offset : offset + size], None))
        body += data[r.fields["name_len"].offset : r.fields["encoding"].offset]  # name_len .. dims
        body += bytes([encoding]) + _encode(version, 4 if version == 1 else VARINT, len(section))
        body += struct.pack("<I", r.value("crc"))
        if encoding == 1:
            values = dict(params or {name: r.value(name) for name, _ in _PARAMS[layout.record_version]})
            values.setdefault("K", values["E"])
            tables = huffman_table_sizes(values["k"], min(values["b"], 16))
            for name, value in (("coding_flags", 0), ("scale_axis", 0), ("TC", tables[0]), ("TG", tables[1])):
                values.setdefault(name, value)
            body += b"".join(_encode(version, width, values[n]) for n, width in _PARAMS[version])
        if r.planes_span is not None and r.index not in replace:  # version 5's plane fields travel as they are
            body += data[r.planes_span[0] : r.planes_span[1]]
        sections.append(section)
    flags = int.from_bytes(data[10:12], "little")
    if version == 1:
        out = MAGIC + struct.pack("<HHI", 1, flags, len(body) & 0xFFFFFFFF) + body + bytes(4) + b"".join(sections)
    else:
        out = MAGIC + struct.pack("<HHI", version, flags, 0) + b"".join(sections) + body + struct.pack("<II", len(body) & 0xFFFFFFFF, 0)
    return recompute_crcs(out)


def version_swap(data: bytes, rng: np.random.Generator) -> bytes:
    """Re-lay a file out in another version's layout (see `relayout`), then a third of the
    time make one field edit; checksums recomputed. A header that does not parse whole
    gets a field edit instead."""
    layout = parse_layout(data)
    others = [v for v in (1, 2, 3) if v != layout.record_version]
    out = relayout(data, others[rng.integers(len(others))]) if layout.version is not None else None
    if out is None:
        return field_edit(data, rng)
    return field_edit(out, rng) if rng.random() < 1 / 3 else out


MUTATORS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "bit_flip": bit_flip,
    "byte_overwrite": byte_overwrite,
    "truncate": truncate,
    "insert": insert,
    "delete": delete,
    "duplicate": duplicate,
    "splice": splice,
    "bit_flip_crc": _with_crcs(bit_flip),
    "byte_overwrite_crc": _with_crcs(byte_overwrite),
    "insert_crc": _with_crcs(insert),
    "delete_crc": _with_crcs(delete),
    "duplicate_crc": _with_crcs(duplicate),
    "splice_crc": _with_crcs(splice),
    "field_edit": field_edit,
    "table_flip": table_flip,
    "table_resize": table_resize,
    "stream_flip": stream_flip,
    "stream_resize": stream_resize,
    "stream_recode": stream_recode,
    "coding_edit": coding_edit,
    "xz_edit": xz_edit,
    "section_splice": section_splice,
    "name_edit": name_edit,
    "shape_edit": shape_edit,
    "version_swap": version_swap,
}
"""Every mutator by name. The ``*_crc`` ones and the structure-aware ones (field_edit,
table_flip, table_resize, stream_flip, stream_resize, stream_recode, coding_edit, xz_edit,
section_splice, name_edit, shape_edit, version_swap) leave valid checksums."""

CRC_FIXING = frozenset(name for name in MUTATORS if name.endswith("_crc")) | {
    "field_edit",
    "table_flip",
    "table_resize",
    "stream_flip",
    "stream_resize",
    "stream_recode",
    "coding_edit",
    "xz_edit",
    "section_splice",
    "name_edit",
    "shape_edit",
    "version_swap",
}


def generate(
    seeds: Mapping[str, bytes], seed: int, index: int, mutators: list[str] | None = None
) -> tuple[bytes, str, str]:
    """Mutated input number `index` of a run with `seed`: (bytes, mutator chain, seed name).

    Deterministic in (seed files, seed, index, mutators): a seed file and one mutator
    (or, a quarter of the time, a chain of 2 or 3, written "a+b") are drawn from a
    Generator seeded with [seed, index].
    """
    rng = np.random.default_rng([seed, index])
    names = sorted(seeds)
    pool = sorted(mutators or MUTATORS)
    seed_name = names[rng.integers(len(names))]
    steps = int(rng.choice([1, 2, 3], p=[0.75, 0.18, 0.07]))
    chain = [pool[rng.integers(len(pool))] for _ in range(steps)]
    data = seeds[seed_name]
    for name in chain:
        data = MUTATORS[name](data, rng)
    return data, "+".join(chain), seed_name
