"""The decoded-size limit: a small file that declares a huge tensor is refused before allocation.

Fillers cost 2 bits each (one in each stream), so a valid file of 1.6 MB can declare
100 GiB of zeros; in version 3 a rANS stream of one certain symbol costs nothing, so a
valid file of 60 bytes can. Readers sum what the tensor and file records decode to (aliases
decode to their target: nothing more) and refuse a file above `max_decoded_size`
(default 64 GiB) from its header alone, with a FormatError naming the tensor.
"""

import struct
import subprocess
import sys
import textwrap
import time
import zlib

import numpy as np
import pytest
import torch
from layout import VERSIONS, encode, seal, spec_entries, varint

import deepzip
from deepzip import container
from deepzip.compressed import CompressedModel, RawTensor
from deepzip.container import header
from deepzip.errors import FormatError
from deepzip.limits import DEFAULT_MAX_DECODED_SIZE

GIB = 1 << 30


@pytest.mark.parametrize("version", VERSIONS)
def test_limit_counts_tensors_and_files_but_not_aliases(version):
    shared = RawTensor(torch.zeros(100))  # 400 bytes, stored once under two names
    model = CompressedModel({"a": shared, "b": shared, "c": RawTensor(torch.zeros(50))}, {"f.txt": b"x" * 100})
    data = encode(model, version)  # a (400) + c (200) + f.txt (100) = 700 decoded bytes
    assert set(container.from_bytes(data, max_decoded_size=700).state_dict()) == {"a", "b", "c"}
    for limit, name in [(699, "f.txt"), (599, "'c'"), (399, "'a'")]:
        with pytest.raises(FormatError, match=f"{name}.*decoded-size limit"):
            container.from_bytes(data, max_decoded_size=limit)
    assert header.parse(data, None).records  # None: no limit


def test_limit_reaches_every_reader(tmp_path):
    path = tmp_path / "m.dzip"
    container.write(CompressedModel({"w": RawTensor(torch.zeros(256))}), path)
    for read in (container.read, container.open_file, deepzip.load):
        with pytest.raises(FormatError, match="'w'"):
            read(path, max_decoded_size=1023)
        read(path, max_decoded_size=1024)
    assert header.parse.__defaults__ == (DEFAULT_MAX_DECODED_SIZE,) and DEFAULT_MAX_DECODED_SIZE == 64 * GIB


# ---------------------------------------------------------------- a decoding bomb

BOMB_SHAPE = (100 << 14, 1 << 14)  # 1,638,400 x 16,384 float32 = 100 GiB
BITS = 12


def bomb_file(shape=BOMB_SHAPE, version: int = 1) -> bytes:
    """A valid file of one float32 codebook tensor of `shape` that keeps no weight at all.

    At b = 12 the entries are fillers every 2**12 elements, E = ceil((n + 1) / 2**12) - 1
    of them (docs/FORMAT.md, "The entries"), which reach (E + 1) * 2**12 - 1 >= n. k = 1:
    codebook [0.5]; code alphabet {0, filler 1}, lengths [1, 1] -> 0x11; gap alphabet of
    4096, symbols 0 and 4095 (a filler's gap) 1 bit each -> 0x10, 2046 zero bytes, 0x01.
    Every entry is a filler: code '1' and gap '1', so both streams are E / 8 bytes of 0xFF
    (E is a multiple of 8 here). The section checksums and the header's are valid.
    """
    numel = int(np.prod(shape))
    entries = -(-(numel + 1) // (1 << BITS)) - 1
    assert entries % 8 == 0 and numel <= (entries + 1) * (1 << BITS) - 1
    stream = b"\xff" * (entries // 8)
    section = struct.pack("<f", 0.5) + bytes([0x11]) + bytes([0x10]) + bytes(2046) + bytes([0x01]) + stream + stream
    # Counts and sizes: u32 in version 1, varints after (K = 0: no weight kept). Version 3
    # adds flags 0 (Huffman, float32) and scale axis 0 after b, and the two table sizes.
    size = (lambda v: struct.pack("<I", v)) if version == 1 else varint
    counts = (entries, len(stream), len(stream)) if version == 1 else (entries, 0, len(stream), len(stream))
    coding = struct.pack("<HB", 1, BITS) if version < 3 else struct.pack("<HBBB", 1, BITS, 0, 0)
    tables = (1, 2048) if version >= 3 else ()
    body = (
        size(1)
        + struct.pack("<H", 11) + b"bomb.weight"
        + bytes([1, len(shape)]) + struct.pack(f"<{len(shape)}I", *shape)  # float32
        + bytes([1]) + size(len(section)) + struct.pack("<I", zlib.crc32(section))  # codebook
        + coding + b"".join(size(v) for v in (*counts, *tables))  # k, b, (flags, axis,) E, (K,) C, G, (TC, TG)
    )  # fmt: skip
    return seal(version, body, [section])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_small_bomb_is_a_valid_file(version):
    # The same construction at 8 x 4096 elements decodes (to zeros): the big one is refused
    # for its size alone, not for damage. Its E agrees with the spec's entry positions.
    assert len(spec_entries([], 8 * 4096, BITS)) == 8
    state = container.from_bytes(bomb_file((8, 4096), version)).state_dict()
    assert torch.equal(state["bomb.weight"], torch.zeros(8, 4096))


def rans_bomb_file(shape=BOMB_SHAPE) -> bytes:
    """A valid version-3 file of one dense float32 record of `shape`, every code 0.

    k = 1, b = 0, flags 0x01 (rANS codes, float32 codebook): codebook [0.5], the rANS table
    of the one used symbol (P = 0, token 0: f = 1), `00 00`, and an empty code stream, for
    any element count n; E = K = n, C = G = 0, TC = 2, TG = 0.
    """
    numel = int(np.prod(shape))
    section = struct.pack("<f", 0.5) + bytes([0x00, 0x00])
    body = (
        varint(1)
        + struct.pack("<H", 11) + b"bomb.weight"
        + bytes([1, len(shape)]) + struct.pack(f"<{len(shape)}I", *shape)
        + bytes([1]) + varint(len(section)) + struct.pack("<I", zlib.crc32(section))
        + struct.pack("<HBBB", 1, 0, 0x01, 0) + b"".join(varint(v) for v in (numel, numel, 0, 0, 2, 0))
    )  # fmt: skip
    return seal(3, body, [section])


def test_a_rans_bomb_is_tiny_valid_and_refused_for_its_size_alone():
    small = rans_bomb_file((8, 4096))
    assert torch.equal(container.from_bytes(small).state_dict()["bomb.weight"], torch.full((8, 4096), 0.5))
    data = rans_bomb_file()
    assert len(data) < 80
    (record,) = header.parse(data, None).records
    assert record.decoded_bytes == 100 * GIB
    start = time.perf_counter()
    with pytest.raises(FormatError, match=r"tensor 'bomb.weight': decodes to 100\.00 GiB"):
        container.from_bytes(data)
    assert time.perf_counter() - start < 0.5


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.dzip"
    data = bomb_file()
    path.write_bytes(data)
    return path, data


def test_bomb_is_a_small_version_1_file(bomb):
    _, data = bomb
    assert data[8] == 1 and 1_500_000 < len(data) < 1_700_000
    (record,) = header.parse(data, None).records
    assert record.decoded_bytes == 100 * GIB and record.entries == 100 << 16


@pytest.mark.parametrize("version", VERSIONS)
def test_bomb_is_refused_before_allocating(bomb, version):
    path, data = bomb
    if version != 1:
        data = bomb_file(version=version)
        path = path.with_name(f"bomb-v{version}.dzip")
        path.write_bytes(data)
    container.from_bytes(bomb_file((8, 4096), version))  # the reader's imports are warm
    for read in (lambda: container.from_bytes(data), lambda: deepzip.load(path)):
        start = time.perf_counter()
        with pytest.raises(FormatError, match=r"tensor 'bomb.weight': decodes to 100\.00 GiB") as err:
            read()
        assert time.perf_counter() - start < 0.5
        assert "64.00 GiB" in str(err.value) and "max_decoded_size" in str(err.value)


def test_bomb_header_parses_when_the_limit_is_raised(bomb):
    _, data = bomb
    assert header.parse(data, None).records[0].shape == BOMB_SHAPE
    assert header.parse(data, 100 * GIB).records[0].name == "bomb.weight"  # the limit is inclusive
    with pytest.raises(FormatError, match="bomb.weight"):
        header.parse(data, 100 * GIB - 1)


PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    import deepzip
    from deepzip import container
    from deepzip.errors import FormatError

    # Both processes import what reading needs (torch, numpy, numba) and read the file's bytes.
    from_bytes, load = container.from_bytes, deepzip.load
    path = sys.argv[1]
    data = open(path, "rb").read()
    if sys.argv[2] == "bomb":
        for read in (lambda: from_bytes(data), lambda: load(path)):
            try:
                read()
            except FormatError as error:
                assert "bomb.weight" in str(error), error
            else:
                sys.exit("the bomb was decoded")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux
    """
)


def test_bomb_refusal_allocates_nothing(bomb):
    path, _ = bomb

    def peak_kb(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path), mode], capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.split()[-1])

    baseline, refused = peak_kb("baseline"), peak_kb("bomb")
    assert refused - baseline < 100 * 1024, (baseline, refused)


def test_the_cli_refuses_the_bomb_in_one_line(bomb, tmp_path):
    path, _ = bomb
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "deepzip.cli", "decompress", str(path), "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("deepzip: error: tensor 'bomb.weight': decodes to 100.00 GiB"), line
    assert "--max-decoded-size" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    print(f"refused by the CLI in {time.perf_counter() - started:.2f} s, process start included")
