"""Compatibility: every .dzip format version deepzip wrote stays readable, bit for bit.

tests/container/golden/v1.dzip was written by deepzip 0.1 (format version 1), v2.dzip by
the version-2 writer (which added a dense record), v3.dzip by the version-3 writer (which
added rANS-coded streams, float16 codebooks, per-slice scales and xz-compressed files) and
v4.dzip by the version-4 writer (which added context-coded significance flags for
positions), v5.dzip by the version-5 writer (which added byte-plane coded raw tensors and
codebook entries) and v6.dzip by `python tests/container/test_golden.py` (version 6, which
adds compact Huffman tables); each is committed with the tensors
it must decode to (vN-expected.safetensors, made from the records in memory, not from
the file). Never regenerate a .dzip after a format change: a later deepzip must still
read these files. The script writes only the current version's files, and only if they
are missing (or with --force, while that version is still being defined).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from layout import (
    CODE_COMPACT,
    GAP_COMPACT,
    CODEBOOK_PLANES,
    ENC_PLANES,
    PLANE_STORED,
    unplane,
    CODE_RANS,
    CODEBOOK_F16,
    ENC_ALIAS,
    ENC_CODEBOOK,
    ENC_FILE,
    ENC_FILE_XZ,
    ENC_RAW,
    GAP_RANS,
    SCALE_F16,
    SIGNIFICANCE,
    bits_equal,
    encode,
    parse_layout,
    scaled_reference,
    split_section,
)
from safetensors.torch import load_file, save_file

from deepzip import container
from deepzip.codec.streams import HUFFMAN
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor

GOLDEN = Path(__file__).parent / "golden"
FILES = {"config.json": json.dumps({"model_type": "toy", "hidden_size": 8}).encode(), "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n"}
# Version 3 stores a file xz-compressed when that is smaller: a merges list is.
MERGES = "".join(f"t{i % 37} o{i % 11}\n" for i in range(400)).encode()
FILES_V3 = FILES | {"tokenizer/merges.txt": MERGES}
CURRENT = 6


def build_golden_model(version: int = 1) -> CompressedModel:
    """Hand-built records (no k-means), so the content never depends on a training run.

    Each version's model is the previous one's plus what the new version added; the
    random draws of the older records come first, so those records never change.
    """
    rng = np.random.default_rng(2016)

    def codebook_tensor(shape, density, k, dtype, index_bits=None):
        numel = int(np.prod(shape))
        positions = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
        codes = rng.integers(0, k, positions.size).astype(np.uint16)
        codebook = np.sort(rng.normal(size=k)).astype(np.float32)
        return CodebookTensor(tuple(shape), dtype, codebook, positions, codes, index_bits)

    embedding = codebook_tensor((50, 8), 0.3, 16, torch.float32)
    tensors = {
        "embed.weight": embedding,
        "head.weight": embedding,  # tied: an alias record
        "fc1.weight": codebook_tensor((32, 50), 0.08, 32, torch.float32, index_bits=5),
        "fc1.bias": RawTensor(torch.from_numpy(rng.normal(size=32).astype(np.float32))),
        "conv.weight": codebook_tensor((4, 3, 3, 3), 0.6, 256, torch.float32, index_bits=8),
        "half.weight": codebook_tensor((20, 20), 0.1, 8, torch.float16),
        "bf16.weight": codebook_tensor((9, 30), 0.2, 4, torch.bfloat16),
        "empty.weight": codebook_tensor((6, 7), 0.0, 2, torch.float32),
        "norm.weight": RawTensor(torch.from_numpy(rng.normal(size=8)).to(torch.bfloat16)),
        "steps": RawTensor(torch.tensor(1234567, dtype=torch.int64)),
        "flags": RawTensor(torch.tensor([True, False, True])),
    } | ({"dense.weight": dense_tensor(rng)} if version >= 2 else {})
    if version >= 3:
        tensors |= version_3_tensors(rng)
    if version >= 4:
        tensors |= version_4_tensors(rng)
    if version >= 5:
        tensors |= version_5_tensors(rng)
    if version >= 6:
        tensors |= version_6_tensors(rng)
    return CompressedModel(tensors, dict(FILES_V3 if version >= 3 else FILES))


def dense_tensor(rng) -> CodebookTensor:
    """Every position kept: version 2 stores it with no position stream."""
    codes = rng.integers(0, 6, 24 * 10).astype(np.uint8)
    return CodebookTensor((24, 10), torch.float16, np.sort(rng.normal(size=6)).astype(np.float32), None, codes)


def version_3_tensors(rng) -> dict:
    """Records that use what version 3 adds; each comment says what the writer makes of it
    (`test_golden_v3_covers_what_version_3_adds` checks it on the committed file).

    Skewed symbol counts make rANS smaller than Huffman (which spends at least a bit a
    symbol); exactly uniform counts over 16 codes make Huffman's 4-bit codes optimal.
    """
    numel = 64 * 40
    gaps_positions = np.flatnonzero(rng.random(numel) < 0.85).astype(np.int64)
    uniform = np.resize(np.arange(16, dtype=np.uint16), gaps_positions.size)
    rng.shuffle(uniform)
    both_positions = np.flatnonzero(rng.random(numel) < 0.85).astype(np.int64)
    skewed = rng.choice(4, size=both_positions.size, p=[0.85, 0.1, 0.03, 0.02]).astype(np.uint16)
    f16_positions = np.flatnonzero(rng.random(100) < 0.4).astype(np.int64)
    scaled_positions = np.flatnonzero(rng.random(120) < 0.5).astype(np.int64)
    scale = np.exp(rng.normal(size=12)).astype(np.float32)
    scale[3] = -scale[3]  # a negative scale: its slice's unkept weights decode to -0.0
    scaled16 = CodebookTensor(
        (4, 6, 5),
        torch.float16,
        rng.normal(size=5).astype(np.float16).astype(np.float32),  # exactly float16
        None,
        rng.integers(0, 5, 120).astype(np.uint8),
        scale=np.array([0.5, 2.0, -1.25, 0.75, 3.0], np.float32),  # exactly float16, along dim 2
        scale_axis=2,
    )
    return {
        # dense, rANS-coded codes (flags 0x01)
        "rans_dense.weight": CodebookTensor(
            (30, 20),
            torch.float32,
            np.sort(rng.normal(size=8)).astype(np.float32),
            None,
            rng.choice(8, size=600, p=[0.8, 0.1, 0.04, 0.02, 0.02, 0.01, 0.005, 0.005]).astype(np.uint8),
        ),
        # sparse, Huffman codes and rANS gaps (flags 0x02), b = 4
        "rans_gaps.weight": CodebookTensor(
            (64, 40), torch.float16, np.sort(rng.normal(size=16)).astype(np.float32), gaps_positions, uniform, 4
        ),
        # sparse, both streams rANS (flags 0x03)
        "rans_both.weight": CodebookTensor(
            (64, 40), torch.bfloat16, np.sort(rng.normal(size=4)).astype(np.float32), both_positions, skewed
        ),
        # a codebook of float16 values, stored as float16 (flags 0x04)
        "f16.weight": CodebookTensor(
            (10, 10),
            torch.float32,
            np.sort(rng.normal(size=6)).astype(np.float16).astype(np.float32),
            f16_positions,
            rng.integers(0, 6, f16_positions.size).astype(np.uint16),
        ),
        # float32 scales along dim 0 (one per row), a sparse bfloat16 tensor
        "scaled.weight": CodebookTensor(
            (12, 10),
            torch.bfloat16,
            np.sort(rng.normal(size=4)).astype(np.float32),
            scaled_positions,
            rng.integers(0, 4, scaled_positions.size).astype(np.uint16),
            scale=scale,
            scale_axis=0,
        ),
        # float16 codebook and float16 scales along an inner dim (flags 0x0C), dense, tied
        "scaled16.weight": scaled16,
        "tied16.weight": scaled16,
    }


def version_4_tensors(rng) -> dict:
    """Records whose positions the writer codes as significance flags (flags bit 4, b = 0):
    masks with whole columns pruned, as magnitude pruning leaves on image inputs, whose
    gaps cost more than the flags' context model."""
    live = rng.random(60) < 0.35  # the columns that keep anything
    mask = (rng.random((40, 60)) < 0.3) & live
    channels = rng.random(5) < 0.6  # a conv weight's live input channels
    conv_mask = (rng.random((16, 5, 3, 3)) < 0.25) & channels[None, :, None, None]
    conv_positions = np.flatnonzero(conv_mask).astype(np.int64)
    return {
        # significance flags, Huffman codes, float32 codebook
        "sig.weight": CodebookTensor(
            (40, 60), torch.float32, np.sort(rng.normal(size=8)).astype(np.float32),
            np.flatnonzero(mask).astype(np.int64), rng.integers(0, 8, int(mask.sum())).astype(np.uint16),
        ),
        # significance flags of a 4-d tensor with float16 scales along its output channels
        "sig_conv.weight": CodebookTensor(
            (16, 5, 3, 3), torch.float16, np.array([-1.5, -0.25, 0.25, 1.5], np.float32),
            conv_positions, rng.choice(4, size=conv_positions.size, p=[0.4, 0.1, 0.1, 0.4]).astype(np.uint8),
            scale=np.exp(rng.normal(size=16)).astype(np.float16).astype(np.float32), scale_axis=0,
        ),
    }  # fmt: skip


def version_5_tensors(rng) -> dict:
    """Records whose bytes the writer codes as byte planes (encoding 5, codebook flag bit 5):
    float32 biases of one sign and a narrow range (their top bytes take a few values), a
    float16 norm and a float32 codebook of 48 sorted centroids."""
    return {
        "planes.bias": RawTensor(torch.from_numpy(rng.uniform(0.01, 0.2, 64).astype(np.float32))),
        "planes16.weight": RawTensor(torch.from_numpy(rng.uniform(0.9, 1.1, 96).astype(np.float16))),
        "planes_cb.weight": CodebookTensor(
            (30, 40), torch.float32, np.sort(rng.uniform(-0.1, 0.1, 48)).astype(np.float32),
            np.arange(0, 1200, 7, dtype=np.int64), rng.integers(0, 48, 172).astype(np.uint16), 3,
        ),
    }  # fmt: skip


def version_6_tensors(rng) -> dict:
    """Huffman-only records whose tables the writer stores compact (codebook flag bits 6 and 7):
    a 3%-sparse layer, whose widest gaps are rare and whose gap alphabet is mostly unused,
    and a dense layer of 300 centroids, most codes near the middle."""
    positions = np.sort(rng.choice(20_000, 600, replace=False)).astype(np.int64)
    return {
        "compact.weight": CodebookTensor(
            (50, 400), torch.float32, np.sort(rng.normal(0, 0.05, 40)).astype(np.float32), positions,
            np.clip(rng.normal(20, 6, 600), 0, 39).astype(np.uint16), coders=(HUFFMAN,),
        ),
        "compact_dense.weight": CodebookTensor(
            (40, 50), torch.float32, np.sort(rng.normal(0, 0.05, 300)).astype(np.float32), None,
            np.clip(rng.normal(150, 30, 2000), 0, 299).astype(np.uint16), coders=(HUFFMAN,),
        ),
    }  # fmt: skip


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_golden_file_decodes_to_its_expected_tensors(version):
    data = (GOLDEN / f"v{version}.dzip").read_bytes()
    assert data[8] == version
    model = container.from_bytes(data)
    expected = load_file(GOLDEN / f"v{version}-expected.safetensors")
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert bits_equal(state[name], tensor), name
    assert state["embed.weight"] is state["head.weight"]
    assert model.files == (FILES_V3 if version >= 3 else FILES)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_golden_file_parses_as_its_version_and_rebuilds_byte_for_byte(version):
    from layout import build_layout

    data = (GOLDEN / f"v{version}.dzip").read_bytes()
    layout = parse_layout(data)
    assert layout["version"] == version and build_layout(layout) == data


def test_golden_files_are_what_this_deepzip_writes():
    # Not a compatibility requirement (a later writer may encode better), but while the
    # format is version 6 a change here means the writer changed: look before updating.
    assert container.to_bytes(build_golden_model(6)) == (GOLDEN / "v6.dzip").read_bytes()
    # The version-5 form (`layout.encode`: the writer's records coded with packed Huffman
    # tables) is the version-5 writer's file: its coding is unchanged.
    assert encode(build_golden_model(5), 5) == (GOLDEN / "v5.dzip").read_bytes()
    # The version-4 form (`layout.encode`: the version-5 records with byte planes stored
    # plainly) is the version-4 writer's file: its coding is unchanged.
    assert encode(build_golden_model(4), 4) == (GOLDEN / "v4.dzip").read_bytes()
    # The version-3 form (`layout.encode`: the writer's records with gaps for positions)
    # is the version-3 writer's file: its coding is unchanged.
    assert encode(build_golden_model(3), 3) == (GOLDEN / "v3.dzip").read_bytes()
    # The version-2 form (`layout.encode`: the codec's Huffman-only coding, float32
    # codebooks, plain files) is the version-2 writer's file: its coding is unchanged.
    assert encode(build_golden_model(2), 2) == (GOLDEN / "v2.dzip").read_bytes()


def test_golden_v3_covers_what_version_3_adds():
    layout = parse_layout((GOLDEN / "v3.dzip").read_bytes())
    records = {r["name"].decode(): r for r in layout["records"]}
    flags = {name: r["params"]["flags"] for name, r in records.items() if r["enc"] == ENC_CODEBOOK}
    b = {name: r["params"]["b"] for name, r in records.items() if r["enc"] == ENC_CODEBOOK}
    assert flags["rans_dense.weight"] & CODE_RANS and b["rans_dense.weight"] == 0
    assert flags["rans_gaps.weight"] & (CODE_RANS | GAP_RANS) == GAP_RANS and b["rans_gaps.weight"] == 4
    assert flags["rans_both.weight"] & (CODE_RANS | GAP_RANS) == CODE_RANS | GAP_RANS
    assert flags["f16.weight"] & CODEBOOK_F16
    assert records["scaled.weight"]["params"]["axis"] == 1 and not flags["scaled.weight"] & SCALE_F16
    assert records["scaled16.weight"]["params"]["axis"] == 3
    assert flags["scaled16.weight"] & (CODEBOOK_F16 | SCALE_F16) == CODEBOOK_F16 | SCALE_F16
    # Huffman streams remain, alongside: the v2 records' codes and gaps, in the v3 layout.
    assert any(f & (CODE_RANS | GAP_RANS) == 0 and b[n] for n, f in flags.items())
    encodings = {name: r["enc"] for name, r in records.items()}
    assert encodings["head.weight"] == encodings["tied16.weight"] == ENC_ALIAS
    assert encodings["fc1.bias"] == ENC_RAW
    assert encodings["config.json"] == ENC_FILE and encodings["tokenizer/merges.txt"] == ENC_FILE_XZ
    assert records["tokenizer/merges.txt"]["dims"] == [len(MERGES)]


def test_golden_v4_covers_what_version_4_adds():
    layout = parse_layout((GOLDEN / "v4.dzip").read_bytes())
    params = {r["name"].decode(): r["params"] for r in layout["records"] if r["enc"] == ENC_CODEBOOK}
    for name in ("sig.weight", "sig_conv.weight"):
        assert params[name]["flags"] & (SIGNIFICANCE | GAP_RANS) == SIGNIFICANCE, name
        assert params[name]["b"] == 0 and params[name]["TG"] == 0 and params[name]["E"] == params[name]["K"], name
    assert params["sig_conv.weight"]["axis"] == 1 and params["sig_conv.weight"]["flags"] & SCALE_F16
    # Gaps remain where they are smaller, in the same file.
    assert any(p["b"] > 0 for p in params.values())


def test_golden_v5_covers_what_version_5_adds():
    layout = parse_layout((GOLDEN / "v5.dzip").read_bytes())
    records = {r["name"].decode(): r for r in layout["records"]}
    for name in ("planes.bias", "planes16.weight"):
        assert records[name]["enc"] == ENC_PLANES and any(mode != PLANE_STORED for mode, _, _ in records[name]["planes"]), name
    assert records["planes_cb.weight"]["params"]["flags"] & CODEBOOK_PLANES
    # Both kinds of plane are there: stored (the low mantissa bytes) and coded.
    modes = {mode for r in records.values() for mode, _, _ in r.get("planes", ())}
    assert PLANE_STORED in modes and modes - {PLANE_STORED}
    assert records["flags"]["enc"] == ENC_RAW  # bytes have no planes to split


def test_golden_v6_covers_what_version_6_adds():
    layout = parse_layout((GOLDEN / "v6.dzip").read_bytes())
    params = {r["name"].decode(): r["params"] for r in layout["records"] if r["enc"] == ENC_CODEBOOK}
    assert params["compact.weight"]["flags"] & GAP_COMPACT and params["compact.weight"]["b"] > 0
    assert params["compact_dense.weight"]["flags"] & CODE_COMPACT and params["compact_dense.weight"]["b"] == 0
    # Compact and packed tables side by side: the older Huffman records keep packed ones.
    assert any(p["flags"] & (CODE_RANS | CODE_COMPACT) == 0 for p in params.values())


def test_golden_v5_planes_hold_the_values_bytes():
    # Each plane, decoded on its own (`layout.unplane`), is byte j of every value: the
    # expected tensors' bytes, split by hand.
    data = (GOLDEN / "v5.dzip").read_bytes()
    layout = parse_layout(data)
    expected = load_file(GOLDEN / "v5-expected.safetensors")
    for record, section in zip(layout["records"], layout["sections"]):
        if record["enc"] == ENC_PLANES:
            tensor = expected[record["name"].decode()].contiguous()
            assert unplane(record["planes"], section, tensor.numel()) == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_golden_v3_scaled_and_float16_records_decode_to_the_formula():
    # The decoded values, from the file's own codebook and scale bytes (parsed by the
    # layout helper) and the reader's codes and positions, by the spec's formula in numpy.
    data = (GOLDEN / "v3.dzip").read_bytes()
    layout = parse_layout(data)
    model = container.from_bytes(data)
    state, checked = model.state_dict(), []
    for record, section in zip(layout["records"], layout["sections"]):
        name, params = record["name"].decode(), record["params"]
        if record["enc"] != ENC_CODEBOOK or not (params["flags"] & CODEBOOK_F16 or params["axis"]):
            continue
        checked.append(name)
        parts = split_section(3, record, section)
        codebook = np.frombuffer(parts["codebook"], "<f2" if params["flags"] & CODEBOOK_F16 else "<f4")
        scales = np.frombuffer(parts["scales"], "<f2" if params["flags"] & SCALE_F16 else "<f4") if params["axis"] else None
        decoded = model.tensors[name]
        expected = scaled_reference(
            tuple(record["dims"]), decoded.dtype, codebook, decoded.flat_positions(), decoded.codes, scales, params["axis"] - 1
        )
        assert bits_equal(state[name], expected), name
    assert {"f16.weight", "scaled.weight", "scaled16.weight"} <= set(checked), checked


def write_golden(force: bool = False) -> None:
    """Write v{CURRENT}.dzip and its expected tensors, unless they exist (and `force` is not given)."""
    model = build_golden_model(CURRENT)
    path = GOLDEN / f"v{CURRENT}.dzip"
    if path.exists() and not force:
        sys.exit(f"{path} exists: golden files are never regenerated (--force while version {CURRENT} is being defined)")
    GOLDEN.mkdir(exist_ok=True)
    path.write_bytes(container.to_bytes(model))
    # From the records in memory, so that the file is checked against an independent decode.
    # safetensors refuses shared storage: store the tied tensor's copy under each name.
    expected = {name: record.to_dense().clone().contiguous() for name, record in model.tensors.items()}
    save_file(expected, GOLDEN / f"v{CURRENT}-expected.safetensors")
    print("wrote", sorted(p.name for p in GOLDEN.iterdir()))


if __name__ == "__main__":
    write_golden(force="--force" in sys.argv[1:])
