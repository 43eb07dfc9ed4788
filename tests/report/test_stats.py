"""Per-layer byte accounting (deepzip.report.stats) checked against hand computations.

Kept counts come from the parametrization masks, fillers from a plain Python loop over
the positions, section sizes and header size from the file's bytes per docs/FORMAT.md.
"""

import math
import struct

import numpy as np
import pytest
import torch

import deepzip
from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel
from deepzip.report.stats import layer_stats, summary

LAYERS = ("0", "2", "4")


def ref_fillers(positions: list[int], index_bits: int) -> int:
    """Fillers the paper's rule inserts: step by 2**b while the next kept weight is too far."""
    widest, prev, fillers = 1 << index_bits, -1, 0
    for p in positions:
        while p - prev > widest:
            prev += widest
            fillers += 1
        prev = p
    return fillers


def spec_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the unsigned LEB128 varint at `pos`, per FORMAT.md."""
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def spec_sections(data: bytes) -> tuple[int, dict[str, tuple[int, int | None]]]:
    """(header body size H, {name: (section size S, index bits b or None)}) read per FORMAT.md,
    versions 3 to 5; `SIGNIFICANCE_BYTES` gets {name: G} of the significance-coded records."""
    header_size, _crc = struct.unpack_from("<II", data, len(data) - 8)
    pos = len(data) - 8 - header_size
    count, pos = spec_varint(data, pos)
    out = {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        dtype, ndim = data[pos], data[pos + 1]
        pos += 2 + 4 * ndim
        encoding = data[pos]
        size, pos = spec_varint(data, pos + 1)
        pos += 4  # crc
        b, planes = None, 0
        if encoding == 1:
            b, flags = data[pos + 2], data[pos + 3]
            pos += 5  # k, b, flags, scale axis
            fields = []
            for _ in range(6):  # E, K, C, G, code table size, gap table size
                value, pos = spec_varint(data, pos)
                fields.append(value)
            if flags & 16:  # positions as significance flags: G bytes of them
                SIGNIFICANCE_BYTES[name] = fields[3]
            if flags & 32:  # version 5: the codebook entries' byte planes
                planes = 2 if flags & 4 else 4
        elif encoding == 5:  # version 5: a raw tensor's byte planes
            planes = RAW_WIDTH[dtype]
        for _ in range(planes):  # u8 mode, then the table and data sizes unless stored
            mode, pos = data[pos], pos + 1
            if mode:
                pos = spec_varint(data, spec_varint(data, pos)[1])[1]
        out[name] = (size, b)
    assert pos == len(data) - 8
    return header_size, out


SIGNIFICANCE_BYTES: dict[str, int] = {}
RAW_WIDTH = {1: 4, 2: 2, 3: 2, 4: 8, 5: 8, 6: 4, 7: 2}  # element bytes by dtype code


def stored_names() -> set[str]:
    """The plain state-dict keys the file holds: each layer's weight and bias."""
    return {f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias")}


def test_layer_stats_codebook_layers(saved):
    model, data = saved
    _, sections = spec_sections(data)
    stats = {s.name: s for s in layer_stats(data)}
    assert set(stats) == stored_names()
    for layer in LAYERS:
        module = model[int(layer)]
        t = module.parametrizations.weight[0]
        s = stats[f"{layer}.weight"]
        numel = module.weight.numel()
        kept = int(t.mask.sum())
        size, b = sections[f"{layer}.weight"]
        k = len(torch.unique(t.codes[t.mask]))  # the file stores only the used centroids
        positions = torch.nonzero(t.mask.flatten()).flatten().tolist()
        flags = SIGNIFICANCE_BYTES.get(f"{layer}.weight")
        # Gaps: b bits an entry, fillers included. Significance flags: no entry but the
        # kept ones, and the flags' stream as the positions' cost.
        fillers = 0 if flags is not None else ref_fillers(positions, b)
        entries = kept + fillers
        position_bits = 8 * flags if flags is not None else entries * b
        assert s.shape == tuple(module.weight.shape)
        assert s.weights == numel
        assert s.kept == kept
        assert s.kept_fraction == kept / numel
        assert s.index_bits == (None if flags is not None else b) and s.significance == (flags is not None)
        assert s.index_label == ("ctx" if flags is not None else str(b))
        bits = max(1, math.ceil(math.log2(k)))
        assert s.weight_bits == bits
        assert s.fillers == fillers
        assert s.dense_bytes == 4 * numel
        assert s.pruned_bytes == math.ceil((entries * 32 + position_bits) / 8)
        assert s.quantized_bytes == math.ceil((entries * bits + position_bits) / 8) + 4 * k
        assert s.file_bytes == size
    assert "0.weight" in SIGNIFICANCE_BYTES and "2.weight" not in SIGNIFICANCE_BYTES  # both kinds are checked
    assert stats["2.weight"].index_bits == 3
    assert stats["2.weight"].fillers > 0  # 3-bit gaps over a 70%-sparse layer need fillers


def test_layer_stats_raw_tensors(saved):
    model, data = saved
    _, sections = spec_sections(data)
    stats = {s.name: s for s in layer_stats(data)}
    for layer in LAYERS:
        bias = model[int(layer)].bias
        s = stats[f"{layer}.bias"]
        stored = 4 * bias.numel()
        # Raw float32 before coding; in the file, version 5's byte planes where those are smaller.
        assert sections[f"{layer}.bias"][0] == s.file_bytes <= stored
        assert (s.weights, s.kept, s.fillers) == (bias.numel(), bias.numel(), 0)
        assert s.weight_bits is None and s.index_bits is None
        assert s.dense_bytes == s.pruned_bytes == s.quantized_bytes == stored


def test_file_bytes_plus_header_is_file_size(saved):
    _, data = saved
    header_size, _ = spec_sections(data)
    stats = layer_stats(data)
    assert sum(s.file_bytes for s in stats) + 16 + header_size + 8 == len(data)  # preamble, header, trailer


def test_summary(saved):
    model, data = saved
    result = summary(data)
    dense = sum(4 * (model[int(i)].weight.numel() + model[int(i)].bias.numel()) for i in LAYERS)
    assert result["dense_bytes"] == dense
    assert result["file_bytes"] == len(data)
    assert result["ratio"] == dense / len(data)
    assert result["ratio"] > 1
    assert [layer["name"] for layer in result["layers"]] == [s.name for s in layer_stats(data)]


def test_layer_stats_rejects_damaged_file(saved):
    _, data = saved
    with pytest.raises(deepzip.FormatError):
        layer_stats(data[:-1])


def test_stats_of_a_hand_made_file():
    # Codebook tensor of 40 elements, kept at 0 and 39 (b = 2): gap 39 -> 9 fillers.
    record = CodebookTensor(
        (4, 10), torch.float32, np.array([1.0, 2.0, 3.0], np.float32), np.array([0, 39]), np.array([2, 1], np.uint16), 2
    )
    data = container.to_bytes(CompressedModel({"w": record}))
    (s,) = layer_stats(data)
    assert (s.kept, s.fillers, s.index_bits, s.weight_bits) == (2, 9, 2, 2)
    assert s.pruned_bytes == math.ceil(11 * 34 / 8)
    assert s.quantized_bytes == math.ceil(11 * 4 / 8) + 12
    assert s.dense_bytes == 160


def test_stats_of_edge_tensors(edge_file):
    # Empty raw tensor, 0-d tensor and a codebook tensor with no kept weight.
    stats = {s.name: s for s in layer_stats(edge_file)}
    assert (stats["empty"].weights, stats["empty"].file_bytes, stats["empty"].kept_fraction) == (0, 0, 0.0)
    assert (stats["scalar"].weights, stats["scalar"].dense_bytes, stats["scalar"].file_bytes) == (1, 4, 8)
    w = stats["w"]
    assert (w.kept, w.fillers, w.pruned_bytes, w.weight_bits) == (0, 0, 0, 1)
    assert w.quantized_bytes == 4
    # Section: codebook 4; with no symbol to code, rANS tables and streams are empty (version 3),
    # smaller than Huffman's ceil(2/2) + ceil(16/2) bytes of lengths.
    assert w.file_bytes == 4
    assert summary(edge_file)["dense_bytes"] == 0 + 4 + 36


def test_tied_tensors_count_once(tied_file):
    stats = layer_stats(tied_file)
    assert [s.name for s in stats] == ["emb.weight"]
    assert summary(tied_file)["dense_bytes"] == 4 * 64 * 32
