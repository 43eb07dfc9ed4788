"""Tests of deepzip.container against docs/FORMAT.md.

Expected bytes are assembled here from the spec with struct and zlib.crc32; damaged files
are crafted with a small spec-level parser/builder (`parse_layout` / `build_layout`) that
recomputes the checksums, so that semantic checks are reached behind valid crcs.
"""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from fuzzing import recompute_crcs

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

MAGIC = bytes([0x89, 0x44, 0x5A, 0x49, 0x50, 0x0D, 0x0A, 0x1A])


# ---------------------------------------------------------------- spec-level helpers


def parse_layout(data: bytes) -> dict:
    """Split a well-formed file into preamble fields, record dicts and section bytes."""
    magic, version, flags, header_size = struct.unpack_from("<8sHHI", data, 0)
    assert magic == MAGIC
    pos = 16
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    records = []
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, pos)
        pos += 2
        name = data[pos : pos + name_len]
        pos += name_len
        dtype, ndim = struct.unpack_from("<BB", data, pos)
        pos += 2
        dims = list(struct.unpack_from(f"<{ndim}I", data, pos))
        pos += 4 * ndim
        encoding, size, crc = struct.unpack_from("<BII", data, pos)
        pos += 9
        params = None
        if encoding == 1:
            params = list(struct.unpack_from("<HBIII", data, pos))
            pos += 15
        records.append(dict(name=name, dtype=dtype, ndim=ndim, dims=dims, enc=encoding, size=size, crc=crc, params=params))
    assert pos == 16 + header_size
    (header_crc,) = struct.unpack_from("<I", data, pos)
    assert header_crc == zlib.crc32(data[:pos])
    pos += 4
    sections = []
    for r in records:
        sections.append(data[pos : pos + r["size"]])
        assert zlib.crc32(sections[-1]) == r["crc"]
        pos += r["size"]
    assert pos == len(data)
    return dict(version=version, flags=flags, records=records, sections=sections)


def build_layout(layout: dict, fix_section_crcs: bool = True) -> bytes:
    """Serialize a layout per the spec; section crcs recomputed unless told otherwise.

    The record's `size` is written as given (tests set it explicitly when they change a
    section); the header crc is always recomputed.
    """
    body = struct.pack("<I", len(layout["records"]))
    for r, section in zip(layout["records"], layout["sections"]):
        crc = zlib.crc32(section) if fix_section_crcs else r["crc"]
        body += struct.pack("<H", len(r["name"])) + r["name"]
        body += struct.pack("<BB", r["dtype"], r["ndim"]) + struct.pack(f"<{len(r['dims'])}I", *r["dims"])
        body += struct.pack("<BII", r["enc"], r["size"], crc)
        if r["params"] is not None:
            body += struct.pack("<HBIII", *r["params"])
    head = MAGIC + struct.pack("<HHI", layout["version"], layout["flags"], len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(layout["sections"])


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


def small_model() -> CompressedModel:
    """The hand-made model of the golden test: a 2x3 codebook weight and a float32 bias."""
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


def expected_small_bytes() -> bytes:
    """The golden file of `small_model`, derived from docs/FORMAT.md by hand."""
    # fc.bias, raw float32 [1.5, -2.0]: 00 00 C0 3F | 00 00 00 C0
    bias_section = bytes.fromhex("0000c03f" "000000c0")
    # fc.weight, codebook [-1.0, 0.5], entries at 0 (code 1) and 4 (code 0), b = 2:
    #   gaps 1 and 4 -> gap symbols [0, 3] (4 <= 2**2, no filler); the end, n = 6, is
    #   6 - 4 = 2 <= 2**2 past the last entry, so no trailing filler either: E = 2
    #   code alphabet k+1 = 3: counts [1,1,0] -> lengths [1,1,0] -> nibbles 1 1 | 0 (pad 0)
    #     canonical: sym0 '0', sym1 '1'; symbols [1, 0] -> '10' + pad -> 0x80
    #   gap alphabet 4: counts [1,0,0,1] -> lengths [1,0,0,1] -> 0x10 0x01
    #     canonical: sym0 '0', sym3 '1'; symbols [0, 3] -> '01' + pad -> 0x40
    weight_section = (
        bytes.fromhex("000080bf" "0000003f")  # -1.0, 0.5 as little-endian float32
        + bytes([0x11, 0x00])
        + bytes([0x10, 0x01])
        + bytes([0x80])
        + bytes([0x40])
    )
    assert len(weight_section) == 14
    bias_record = (
        struct.pack("<H", 7) + b"fc.bias"
        + bytes([1, 1]) + struct.pack("<I", 2)  # float32, ndim 1, dims [2]
        + bytes([0]) + struct.pack("<II", 8, zlib.crc32(bias_section))
    )  # fmt: skip
    weight_record = (
        struct.pack("<H", 9) + b"fc.weight"
        + bytes([1, 2]) + struct.pack("<II", 2, 3)  # float32, ndim 2, dims [2, 3]
        + bytes([1]) + struct.pack("<II", 14, zlib.crc32(weight_section))
        + struct.pack("<H", 2) + bytes([2]) + struct.pack("<III", 2, 1, 1)  # k, b, E, C, G
    )  # fmt: skip
    # Records sorted by name: "fc.bias" < "fc.weight".
    body = struct.pack("<I", 2) + bias_record + weight_record
    head = MAGIC + struct.pack("<HHI", 1, 0, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + bias_section + weight_section


def small_bytes() -> bytes:
    return container.to_bytes(small_model())


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """dtype, shape and every bit equal (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
        return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))
    return torch.equal(a, b)


# ---------------------------------------------------------------- golden bytes


def test_golden_bytes_small_model():
    assert container.to_bytes(small_model()) == expected_small_bytes()


def test_golden_bytes_decode_to_hand_computed_tensors():
    model = container.from_bytes(expected_small_bytes())
    sd = model.state_dict()
    assert set(sd) == {"fc.weight", "fc.bias"}
    assert bits_equal(sd["fc.weight"], torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert bits_equal(sd["fc.bias"], torch.tensor([1.5, -2.0]))
    w = model.tensors["fc.weight"]
    assert w.index_bits == 2 and w.positions.tolist() == [0, 4] and w.codes.tolist() == [1, 0]


def test_golden_bytes_with_fillers_float16():
    # "w", float16, shape (20,), codebook [0.25], kept at 1 and 10 (codes 0, 0), b = 2:
    #   gap 2 -> sym 1; gap 9 -> fillers at 5 and 9 (sym 3 each), then 10 (sym 0);
    #   the end n = 20 is 10 past 10 > 4 -> fillers at 14 and 18 (sym 3 each), and
    #   20 - 18 = 2 <= 4 ends it: (20 - 10 - 1) >> 2 = 2 trailing fillers, E = 6
    #   code symbols [0, 1, 1, 0, 1, 1] (1 = filler): lengths [1, 1] -> 0x11;
    #   canonical sym0 '0', sym1 '1': '011011' -> 011011(00) -> 0x6C
    #   gap symbols [1, 3, 3, 0, 3, 3]: counts [1,1,0,4] -> the unique optimum gives sym3
    #   1 bit, sym0 and sym1 2 bits: nibbles 2 2 0 1 -> 0x22 0x01; canonical sym3 '0',
    #   sym0 '10', sym1 '11': '11' '0' '0' '10' '0' '0' -> 11001000 -> 0xC8
    record = CodebookTensor(
        (20,), torch.float16, np.array([0.25], np.float32), np.array([1, 10]), np.array([0, 0], np.uint16), 2
    )
    assert spec_entries([1, 10], 20, 2) == [1, 5, 9, 10, 14, 18]
    section = struct.pack("<f", 0.25) + bytes([0x11]) + bytes([0x22, 0x01]) + bytes([0x6C]) + bytes([0xC8])
    body = (
        struct.pack("<I", 1)
        + struct.pack("<H", 1) + b"w"
        + bytes([2, 1]) + struct.pack("<I", 20)
        + bytes([1]) + struct.pack("<II", len(section), zlib.crc32(section))
        + struct.pack("<HBIII", 1, 2, 6, 1, 1)
    )  # fmt: skip
    head = MAGIC + struct.pack("<HHI", 1, 0, len(body)) + body
    expected = head + struct.pack("<I", zlib.crc32(head)) + section
    assert container.to_bytes(CompressedModel({"w": record})) == expected
    dense = torch.zeros(20, dtype=torch.float16)
    dense[1] = dense[10] = 0.25
    assert bits_equal(container.from_bytes(expected).state_dict()["w"], dense)


def test_golden_bytes_empty_model():
    body = struct.pack("<I", 0)
    head = MAGIC + struct.pack("<HHI", 1, 0, 4) + body
    expected = head + struct.pack("<I", zlib.crc32(head))
    assert container.to_bytes(CompressedModel({})) == expected
    assert container.from_bytes(expected).tensors == {}


def test_golden_bytes_raw_dtypes():
    # One raw record per dtype: code and little-endian element bytes from the spec table.
    cases = {
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
    model = CompressedModel({name: RawTensor(t) for name, (t, _, _) in cases.items()})
    body = struct.pack("<I", len(cases))
    sections = b""
    for name in sorted(cases):
        _, code, section = cases[name]
        body += struct.pack("<H", 1) + name.encode() + bytes([code, 1]) + struct.pack("<I", 1)
        body += bytes([0]) + struct.pack("<II", len(section), zlib.crc32(section))
        sections += section
    head = MAGIC + struct.pack("<HHI", 1, 0, len(body)) + body
    assert container.to_bytes(model) == head + struct.pack("<I", zlib.crc32(head)) + sections


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


@pytest.mark.parametrize("dtype", RAW_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (3, 4, 5), (1, 1, 1, 1, 1, 1, 1, 2)])
def test_round_trip_raw(dtype, shape):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((dtype, shape)).encode()))
    tensor = random_tensor(gen, dtype, shape)
    data = container.to_bytes(CompressedModel({"t": RawTensor(tensor)}))
    # The section holds the elements row-major, little-endian, per the spec.
    layout = parse_layout(data)
    assert layout["records"][0]["dims"] == list(shape)
    numel = int(np.prod(shape, dtype=np.int64))
    assert layout["records"][0]["size"] == numel * tensor.element_size()
    if dtype == torch.bfloat16:
        reference = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
    elif dtype == torch.bool:
        reference = tensor.numpy().astype(np.uint8).tobytes()
    else:
        reference = tensor.numpy().astype(tensor.numpy().dtype.newbyteorder("<")).tobytes()
    assert layout["sections"][0] == reference
    out = container.from_bytes(data).state_dict()["t"]
    assert bits_equal(out, tensor)


def test_round_trip_special_float_values():
    values = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -3.5]
    tensors = {f"x{i}": torch.tensor(values, dtype=dt) for i, dt in enumerate(RAW_DTYPES[:4])}
    nan_payload = torch.tensor([0x7FC01234], dtype=torch.int32).view(torch.float32)
    tensors["payload"] = nan_payload
    model = CompressedModel({k: RawTensor(v) for k, v in tensors.items()})
    out = container.from_bytes(container.to_bytes(model)).state_dict()
    for name, tensor in tensors.items():
        assert bits_equal(out[name], tensor), name


def test_round_trip_non_contiguous_raw():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t = base.t()  # non-contiguous view, shape (4, 3)
    data = container.to_bytes(CompressedModel({"t": RawTensor(t)}))
    assert parse_layout(data)["sections"][0] == np.ascontiguousarray(t.numpy()).astype("<f4").tobytes()
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


@pytest.mark.parametrize("k", [1, 2, 16, 256, 4096])
@pytest.mark.parametrize("index_bits", [None, 1, 4, 12])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_round_trip_codebook(k, index_bits, density):
    rng = np.random.default_rng(k * 7 + (index_bits or 0) + int(density * 100))
    shape = (6, 5, 3, 3)
    numel = int(np.prod(shape))
    positions = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
    codes = rng.integers(0, k, positions.size).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    record = CodebookTensor(shape, torch.float32, codebook, positions, codes, index_bits)
    data = container.to_bytes(CompressedModel({"conv.weight": record}))
    # E counts the kept weights plus the spec's fillers, trailing ones included.
    params = parse_layout(data)["records"][0]["params"]
    assert params[2] == len(spec_entries(positions, numel, params[1]))
    assert numel <= (params[2] + 1) << params[1]
    back = container.from_bytes(data).tensors["conv.weight"]
    assert isinstance(back, CodebookTensor)
    assert back.shape == shape and back.dtype == torch.float32
    assert back.codebook.tobytes() == codebook.tobytes()
    assert back.positions.tolist() == positions.tolist()
    assert back.codes.tolist() == codes.tolist()
    if index_bits is not None:
        assert back.index_bits == index_bits
    ref = dense_reference(shape, torch.float32, codebook, positions, codes)
    assert bits_equal(back.to_dense(), ref)
    assert bits_equal(container.from_bytes(data).state_dict()["conv.weight"], record.to_dense())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_codebook_float_dtypes(dtype):
    codebook = np.array([-1.25, 0.1, 3e38, -0.0], np.float32)
    positions = np.array([0, 3, 17, 39], np.int64)
    codes = np.array([0, 1, 2, 3], np.uint16)
    record = CodebookTensor((4, 10), dtype, codebook, positions, codes, None)
    out = container.from_bytes(container.to_bytes(CompressedModel({"w": record}))).state_dict()["w"]
    # The decoded value is the float32 codebook value converted to the record's dtype.
    assert bits_equal(out, dense_reference((4, 10), dtype, codebook, positions, codes))


def test_round_trip_mixed_model_state_dict():
    gen = torch.Generator().manual_seed(3)
    tensors = {f"raw_{str(dt).split('.')[-1]}": RawTensor(random_tensor(gen, dt, (3, 2))) for dt in RAW_DTYPES}
    tensors["scalar"] = RawTensor(torch.tensor(2.5, dtype=torch.float64))
    tensors["empty"] = RawTensor(torch.zeros(0, 4, dtype=torch.int16))
    tensors["ünïcode.wéight"] = small_model().tensors["fc.weight"]
    model = CompressedModel(tensors)
    back = container.from_bytes(container.to_bytes(model))
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
    # Records appear sorted by name.
    names = [r["name"].decode() for r in parse_layout(forward)["records"]]
    assert names == sorted(name for name, _ in items)


# ---------------------------------------------------------------- write / read


def test_write_creates_file_and_returns_size(tmp_path):
    path = tmp_path / "m.dzip"
    size = container.write(small_model(), path)
    assert size == path.stat().st_size == len(expected_small_bytes())
    assert path.read_bytes() == expected_small_bytes()
    assert os.listdir(tmp_path) == ["m.dzip"]
    assert bits_equal(container.read(path).state_dict()["fc.bias"], torch.tensor([1.5, -2.0]))


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
    assert path.read_bytes() == expected_small_bytes() and size == len(expected_small_bytes())
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
    assert (tmp_path / "rel.dzip").read_bytes() == expected_small_bytes()
    assert os.listdir(tmp_path) == ["rel.dzip"]


def test_read_missing_path(tmp_path):
    with pytest.raises(DeepzipError):
        container.read(tmp_path / "nope.dzip")
    with pytest.raises(DeepzipError):
        container.read(tmp_path)  # a directory is no file either


# ---------------------------------------------------------------- rejections: framing


def test_parse_build_helpers_are_faithful():
    data = small_bytes()
    assert build_layout(parse_layout(data)) == data


def test_bad_magic():
    data = bytearray(small_bytes())
    for i in range(8):
        damaged = bytearray(data)
        damaged[i] ^= 0x20
        with pytest.raises(FormatError):
            container.from_bytes(bytes(damaged))
    with pytest.raises(FormatError):
        container.from_bytes(b"PK\x03\x04" + bytes(100))


@pytest.mark.parametrize("version", [2, 3, 0xFFFF])
def test_newer_version(version):
    layout = parse_layout(small_bytes())
    layout["version"] = version
    with pytest.raises(VersionError, match="newer"):
        container.from_bytes(build_layout(layout))
    # Rejected before anything past the preamble is looked at (not as a truncation).
    with pytest.raises(VersionError, match="newer"):
        container.from_bytes(MAGIC + struct.pack("<HHI", version, 0, 0xFFFFFFFF))


def test_version_zero():
    layout = parse_layout(small_bytes())
    layout["version"] = 0
    with pytest.raises(VersionError):
        container.from_bytes(build_layout(layout))


@pytest.mark.parametrize("flags", [1, 0x8000])
def test_nonzero_flags(flags):
    layout = parse_layout(small_bytes())
    layout["flags"] = flags
    with pytest.raises(FormatError):
        container.from_bytes(build_layout(layout))


def test_every_proper_prefix_is_rejected():
    data = small_bytes()
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])
    # Once the 16-byte preamble is whole, a cut is reported as a truncation.
    for cut in range(16, len(data)):
        with pytest.raises(TruncatedError):
            container.from_bytes(data[:cut])


def test_prefix_cut_inside_preamble_is_a_truncation():
    data = small_bytes()
    for cut in range(8, 16):
        with pytest.raises(TruncatedError):
            container.from_bytes(data[:cut])


def test_every_proper_prefix_with_empty_sections_is_rejected():
    model = CompressedModel(
        {
            "e": RawTensor(torch.zeros(0)),
            # 5 < 2**3 elements: no kept weight and no filler, so both streams are empty.
            "z": CodebookTensor((5,), torch.float32, np.ones(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16), 3),
        }
    )
    data = container.to_bytes(model)
    assert parse_layout(data)["records"][1]["params"][2:] == [0, 0, 0]  # E, C, G
    container.from_bytes(data)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            container.from_bytes(data[:cut])
    for cut in range(16, len(data)):
        with pytest.raises(TruncatedError):
            container.from_bytes(data[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\xff", b"\x00" * 17])
def test_trailing_bytes(tail):
    with pytest.raises(FormatError):
        container.from_bytes(small_bytes() + tail)


def test_every_single_byte_corruption_is_rejected():
    # CRC-32 detects every single-byte error, so no flip anywhere may yield a valid file.
    data = small_bytes()
    for i in range(len(data)):
        for xor in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[i] ^= xor
            with pytest.raises(FormatError):
                container.from_bytes(bytes(damaged))


def test_header_crc_mismatch():
    data = bytearray(small_bytes())
    (header_size,) = struct.unpack_from("<I", data, 12)
    damaged = bytearray(data)
    damaged[16 + 5] ^= 0x01  # inside the first record's name
    with pytest.raises(ChecksumError, match="(?i)checksum|crc"):
        container.from_bytes(bytes(damaged))
    damaged = bytearray(data)
    damaged[16 + header_size] ^= 0x01  # the stored crc itself
    with pytest.raises(ChecksumError, match="(?i)checksum|crc"):
        container.from_bytes(bytes(damaged))


@pytest.mark.parametrize("which", [0, 1])
def test_section_crc_mismatch(which):
    layout = parse_layout(small_bytes())
    name = layout["records"][which]["name"].decode()
    section = bytearray(layout["sections"][which])
    section[-1] ^= 0x04
    layout["sections"][which] = bytes(section)
    with pytest.raises(ChecksumError, match="(?i)checksum|crc") as err:
        container.from_bytes(build_layout(layout, fix_section_crcs=False))
    assert name in str(err.value)


def test_header_size_past_end():
    data = bytearray(small_bytes())
    struct.pack_into("<I", data, 12, 0xFFFFFFFF)
    with pytest.raises(TruncatedError):
        container.from_bytes(bytes(data))


def test_tensor_count_too_large_behind_valid_crc():
    data = small_bytes()
    (header_size,) = struct.unpack_from("<I", data, 12)
    head = bytearray(data[: 16 + header_size])
    struct.pack_into("<I", head, 16, 0xFFFFFFFF)
    crafted = bytes(head) + struct.pack("<I", zlib.crc32(head)) + data[20 + header_size :]
    with pytest.raises(FormatError):
        container.from_bytes(crafted)


def test_header_with_unused_bytes_behind_valid_crc():
    data = small_bytes()
    (header_size,) = struct.unpack_from("<I", data, 12)
    head = bytearray(data[: 16 + header_size]) + b"\x00"
    struct.pack_into("<I", head, 12, header_size + 1)
    crafted = bytes(head) + struct.pack("<I", zlib.crc32(head)) + data[20 + header_size :]
    with pytest.raises(FormatError):
        container.from_bytes(crafted)


# ---------------------------------------------------------------- rejections: semantics behind valid crcs

BIAS, WEIGHT = 0, 1  # record indices in small_model's file (sorted by name)


def crafted(edit) -> bytes:
    layout = parse_layout(small_bytes())
    edit(layout["records"], layout["sections"])
    return build_layout(layout)


def assert_rejected(data: bytes, name: str | None):
    with pytest.raises(FormatError) as err:
        container.from_bytes(data)
    message = str(err.value)
    assert "checksum" not in message  # the crafted file's crcs are valid
    assert not isinstance(err.value, ChecksumError)
    if name is not None:
        assert name in message, message


def test_duplicate_names():
    def edit(records, sections):
        records[WEIGHT]["name"] = b"fc.bias"

    # Both records still parse on their own, the second one is a repeat.
    assert_rejected(crafted(edit), "fc.bias")


@pytest.mark.parametrize("code", [0, 11, 255])
@pytest.mark.parametrize("which", [BIAS, WEIGHT])
def test_unknown_dtype(code, which):
    def edit(records, sections):
        records[which]["dtype"] = code

    assert_rejected(crafted(edit), ["fc.bias", "fc.weight"][which])


@pytest.mark.parametrize("encoding", [2, 255])
def test_unknown_encoding(encoding):
    def edit(records, sections):
        records[BIAS]["enc"] = encoding

    assert_rejected(crafted(edit), "fc.bias")


@pytest.mark.parametrize("ndim", [9, 255])
def test_too_many_dims(ndim):
    def edit(records, sections):
        records[BIAS]["ndim"] = ndim
        records[BIAS]["dims"] = [2] + [1] * (ndim - 1)  # same element count

    assert_rejected(crafted(edit), "fc.bias")


def test_eight_dims_is_fine():
    def edit(records, sections):
        records[BIAS]["ndim"] = 8
        records[BIAS]["dims"] = [1, 1, 1, 2, 1, 1, 1, 1]

    out = container.from_bytes(crafted(edit)).state_dict()["fc.bias"]
    assert out.shape == (1, 1, 1, 2, 1, 1, 1, 1)


def test_element_count_over_2_40():
    def edit(records, sections):
        records[BIAS]["ndim"] = 3
        records[BIAS]["dims"] = [1 << 20, 1 << 20, 2]

    assert_rejected(crafted(edit), "fc.bias")


@pytest.mark.parametrize("k", [0, 4097, 5000, 0xFFFF])
def test_codebook_size_out_of_range(k):
    def edit(records, sections):
        records[WEIGHT]["params"][0] = k

    assert_rejected(crafted(edit), "fc.weight")


@pytest.mark.parametrize("b", [0, 13, 255])
def test_index_bits_out_of_range(b):
    def edit(records, sections):
        records[WEIGHT]["params"][1] = b

    assert_rejected(crafted(edit), "fc.weight")


def test_entry_count_larger_than_numel():
    # numel = 6; E = 7 (streams would need more bits, but E is checked against numel).
    def edit(records, sections):
        records[WEIGHT]["params"][2] = 7

    assert_rejected(crafted(edit), "fc.weight")


def test_codebook_section_size_not_sum_of_parts():
    def edit(records, sections):
        sections[WEIGHT] = sections[WEIGHT] + b"\x00"
        records[WEIGHT]["size"] += 1

    assert_rejected(crafted(edit), "fc.weight")


def test_codebook_section_size_smaller_than_parts():
    def edit(records, sections):
        sections[WEIGHT] = sections[WEIGHT][:-1]
        records[WEIGHT]["size"] -= 1

    assert_rejected(crafted(edit), "fc.weight")


def test_raw_section_size_not_matching_shape():
    def edit_shape(records, sections):
        records[BIAS]["dims"] = [3]  # 12 bytes expected, 8 stored

    def edit_size(records, sections):
        sections[BIAS] = sections[BIAS] + b"\x00" * 4
        records[BIAS]["size"] += 4

    def edit_dtype(records, sections):
        records[BIAS]["dtype"] = 4  # float64: 16 bytes expected

    for edit in (edit_shape, edit_size, edit_dtype):
        assert_rejected(crafted(edit), "fc.bias")


def test_raw_reinterpretation_with_matching_size_is_valid():
    # float32 [2] -> int16 [4]: 8 bytes either way, so this is a valid (different) file.
    def edit(records, sections):
        records[BIAS]["dtype"] = 7
        records[BIAS]["dims"] = [4]

    out = container.from_bytes(crafted(edit)).state_dict()["fc.bias"]
    assert out.tolist() == list(struct.unpack("<4h", struct.pack("<2f", 1.5, -2.0)))


@pytest.mark.parametrize("code", [5, 6, 7, 8, 9, 10])
def test_codebook_encoding_on_non_float_dtype(code):
    def edit(records, sections):
        records[WEIGHT]["dtype"] = code

    assert_rejected(crafted(edit), "fc.weight")


@pytest.mark.parametrize("code", [2, 3, 4])
def test_codebook_encoding_on_other_float_dtypes_is_valid(code):
    def edit(records, sections):
        records[WEIGHT]["dtype"] = code

    out = container.from_bytes(crafted(edit)).state_dict()["fc.weight"]
    assert out.dtype == container.DTYPES[code]
    assert out.float().tolist() == [[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]


def test_empty_name():
    def edit(records, sections):
        records[BIAS]["name"] = b""

    assert_rejected(crafted(edit), None)


def test_name_too_long():
    def edit(records, sections):
        records[BIAS]["name"] = b"x" * 1025

    assert_rejected(crafted(edit), None)


def test_name_1024_bytes_is_fine():
    def edit(records, sections):
        records[BIAS]["name"] = b"x" * 1024

    assert "x" * 1024 in container.from_bytes(crafted(edit)).tensors


def test_name_not_utf8():
    def edit(records, sections):
        records[BIAS]["name"] = b"fc.\xff\xfe"

    assert_rejected(crafted(edit), None)


# Offsets inside small_model's 14-byte weight section:
# 0..7 codebook, 8..9 code-length table, 10..11 gap-length table, 12 code stream, 13 gap stream.


def replace_section_bytes(offset, new):
    def edit(records, sections):
        s = bytearray(sections[WEIGHT])
        s[offset : offset + len(new)] = new
        sections[WEIGHT] = bytes(s)

    return edit


@pytest.mark.parametrize(
    "offset, new, why",
    [
        (8, bytes([0x11, 0x10]), "Kraft: three 1-bit codes"),
        (8, bytes([0x11, 0x01]), "nonzero pad nibble of the 3-symbol table"),
        (10, bytes([0x11, 0x11]), "Kraft: four 1-bit codes"),
        (12, bytes([0x81]), "nonzero padding bits in the code stream"),
        (13, bytes([0x41]), "nonzero padding bits in the gap stream"),
        (8, bytes([0x22, 0x00]), "incomplete code {00, 01}: stream '10..' is no code word"),
        (8, bytes([0x00, 0x00]), "no code for 2 entries"),
    ],
)
def test_damaged_codebook_section(offset, new, why):
    assert_rejected(crafted(replace_section_bytes(offset, new)), "fc.weight")


def test_long_codes_do_not_fit_the_streams():
    # Nibbles cap lengths at 15; a table of all-15 lengths for 3 symbols is a valid (if
    # wasteful) incomplete code, but then the 1-byte streams are too short for 2 symbols.
    assert_rejected(crafted(replace_section_bytes(8, bytes([0xFF, 0xF0]))), "fc.weight")


def test_stream_with_trailing_byte():
    def edit(records, sections):
        s = sections[WEIGHT]
        sections[WEIGHT] = s[:13] + b"\x00" + s[13:]  # code stream 0x80 0x00
        records[WEIGHT]["params"][3] = 2
        records[WEIGHT]["size"] += 1

    assert_rejected(crafted(edit), "fc.weight")


def test_stream_ends_early():
    # E = 9 one-bit symbols need 2 bytes per stream but each stream holds 1 byte; the
    # shape grows to 12 elements so that E <= numel and only the stream length is wrong.
    def edit(records, sections):
        records[WEIGHT]["dims"] = [4, 3]
        records[WEIGHT]["params"][2] = 9

    assert_rejected(crafted(edit), "fc.weight")


def test_gap_stream_past_element_count():
    # Entries at 0 and 4: a 2x2 tensor (4 elements) has no position 4.
    def edit(records, sections):
        records[WEIGHT]["dims"] = [2, 2]

    assert_rejected(crafted(edit), "fc.weight")


def test_last_entry_at_last_element_is_fine():
    def edit(records, sections):
        records[WEIGHT]["ndim"] = 1
        records[WEIGHT]["dims"] = [5]

    out = container.from_bytes(crafted(edit)).state_dict()["fc.weight"]
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, -1.0]


def test_shape_beyond_the_streams_reach():
    # fc.weight's entries are 0 and 4 at b = 2, so they reach a tensor of at most
    # 4 + 2**2 = 8 elements. Enlarging the shape behind valid crcs must be caught.
    def with_dims(*dims):
        def edit(records, sections):
            records[WEIGHT]["ndim"] = len(dims)
            records[WEIGHT]["dims"] = list(dims)

        return crafted(edit)

    out = container.from_bytes(with_dims(8)).state_dict()["fc.weight"]  # 8 - 4 == 2**2
    assert out.tolist() == [0.5, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0]
    for dims in [(9,), (3, 3), (2, 3, 4), (1 << 20, 1 << 19)]:
        with pytest.raises(FormatError) as err:
            container.from_bytes(with_dims(*dims))
        assert "fc.weight" in str(err.value)
        assert not isinstance(err.value, (ChecksumError, TruncatedError, VersionError))


def test_empty_stream_beyond_its_reach():
    # A codebook record with no entries at b = 2 covers up to 2**2 - 1 = 3 elements.
    def model(n):
        nothing = (np.zeros(0, np.int64), np.zeros(0, np.uint16))
        return CompressedModel({"w": CodebookTensor((n,), torch.float32, np.ones(1, np.float32), *nothing, 2)})

    data = container.to_bytes(model(3))
    assert parse_layout(data)["records"][0]["params"][2] == 0
    assert container.from_bytes(data).state_dict()["w"].tolist() == [0.0] * 3
    layout = parse_layout(data)
    layout["records"][0]["dims"] = [1 << 30]
    with pytest.raises(FormatError, match="'w'"):
        container.from_bytes(build_layout(layout))
    # And the writer bridges the end with n >> b fillers: 40 >> 2 = 10.
    assert parse_layout(container.to_bytes(model(40)))["records"][0]["params"][2] == 10


def test_empty_stream_for_exactly_2_pow_b_elements_is_rejected():
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.uint16))
    layout = parse_layout(
        container.to_bytes(CompressedModel({"w": CodebookTensor((3,), torch.float32, np.ones(1, np.float32), *nothing, 2)}))
    )
    layout["records"][0]["dims"] = [4]
    with pytest.raises(FormatError, match="'w'"):
        container.from_bytes(build_layout(layout))


def test_rejections_are_format_errors_and_deepzip_errors():
    assert issubclass(FormatError, DeepzipError)
    assert deepzip.FormatError is FormatError
    for cls in (ChecksumError, TruncatedError, VersionError):
        assert issubclass(cls, FormatError)
        assert getattr(deepzip, cls.__name__) is cls


# ---------------------------------------------------------------- writer consistency


@pytest.mark.parametrize(
    "record",
    [
        CodebookTensor((4,), torch.int32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 3),
        CodebookTensor((4,), torch.float32, np.ones(2, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 13),
        CodebookTensor((4,), torch.float32, np.ones(5000, np.float32), np.array([0, 2]), np.array([0, 1], np.uint16), 3),
    ],
    ids=["int-dtype-codebook", "index-bits-13", "k-5000"],
)
def test_writer_refuses_records_its_reader_would_reject(record):
    """The writer refuses (DeepzipError) any record docs/FORMAT.md forbids: never a dead file."""
    try:
        data = container.to_bytes(CompressedModel({"w": record}))
    except DeepzipError:
        return  # refusing to write is the correct behaviour
    container.from_bytes(data)  # otherwise the file must at least be readable


def test_bool_bytes_other_than_0_or_1_are_rejected():
    data = bytearray(container.to_bytes(CompressedModel({"flags": RawTensor(torch.tensor([True, False, True]))})))
    data[-2] = 2  # the middle element of the 3-byte section at the end of the file
    # Re-seal the section's CRC so that the semantic check, not the checksum, fires.
    with pytest.raises(FormatError, match="bool"):
        container.from_bytes(recompute_crcs(bytes(data)))


def test_tied_tensors_are_stored_once_and_decode_shared():
    shared = RawTensor(torch.arange(1000, dtype=torch.float32))
    tied = container.to_bytes(CompressedModel({"encoder.embed": shared, "decoder.out": shared}))
    untied = container.to_bytes(CompressedModel({"encoder.embed": shared, "decoder.out": RawTensor(shared.tensor.clone())}))
    assert len(untied) - len(tied) > 4000 - len("encoder.embed") - 1
    state = container.from_bytes(tied).state_dict()
    assert state["encoder.embed"] is state["decoder.out"]
    assert torch.equal(state["decoder.out"], shared.tensor)
    # Stored under the first name in sorted order; the alias's section names it.
    layout = parse_layout(tied)
    names = [r["name"].decode() for r in layout["records"]]
    assert names == ["decoder.out", "encoder.embed"]
    assert tied.endswith(b"decoder.out")


def test_files_travel_with_the_model():
    model = CompressedModel({"w": RawTensor(torch.ones(2))}, {"config.json": b'{"a": 1}', "sub/vocab.txt": b"x\ny"})
    back = container.from_bytes(container.to_bytes(model))
    assert back.files == model.files
    assert set(back.state_dict()) == {"w"}


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a//b", "a/./b", "c:\\x", "C:x", "a\\b", "x\x00"])
def test_unsafe_file_names_are_refused_by_writer_and_reader(name):
    with pytest.raises(DeepzipError):
        container.to_bytes(CompressedModel({}, {name: b"1"}))
    # A crafted file with that name, valid CRCs: the reader refuses it too.
    data = container.to_bytes(CompressedModel({}, {"n" * len(name.encode()): b"1"}))
    crafted = recompute_crcs(data.replace(b"n" * len(name.encode()), name.encode(), 1))
    with pytest.raises(FormatError, match="relative path"):
        container.from_bytes(crafted)


@pytest.mark.parametrize("target, words", [(b"zzzz", "not a stored tensor"), (b"bbbb", "not a stored tensor"), (b"ffff", "not a stored tensor"), (b"oooo", "differs")])
def test_bad_alias_targets_are_rejected(target, words):
    stored = RawTensor(torch.ones(3))
    model = CompressedModel({"aaaa": stored, "bbbb": stored, "cccc": stored, "oooo": RawTensor(torch.ones(4))}, {"ffff": b"123"})
    data = container.to_bytes(model)
    # Sections in record order: aaaa (12 bytes), bbbb -> "aaaa", cccc -> "aaaa", oooo (16), ffff (3).
    end = len(data) - 3 - 16
    assert data[end - 4 : end] == b"aaaa"
    crafted = recompute_crcs(data[: end - 4] + target + data[end:])
    with pytest.raises(FormatError, match=words) as error:
        container.from_bytes(crafted)
    assert "cccc" in str(error.value)
