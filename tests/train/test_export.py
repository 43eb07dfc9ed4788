"""Tests of deepzip.save / deepzip.load on a small pruned and quantized model.

References: the quantized model's own `module.weight`, a dense rebuild from the
parametrization's centroids/codes/mask, and the plain model's state_dict keys.
"""

import os
import struct

import pytest
import torch
from torch import nn

import deepzip
from deepzip import container as fileformat
from deepzip.compressed import CodebookTensor, RawTensor
from deepzip.container.spec import FLAG_SIGNIFICANCE
from deepzip.errors import ConfigError, DeepzipError

LAYERS = ("0", "2", "4")  # conv, fc1, fc2 inside the Sequential


def make_model() -> nn.Sequential:
    """Conv2d 3->4 k3 on 3x3x7 inputs (-> 4x1x5 = 20), Linear 20->30, Linear 30->5."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def make_input(seed=1) -> torch.Tensor:
    return torch.randn(8, 3, 3, 7, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def quantized():
    torch.manual_seed(0)
    model = make_model()
    deepzip.prune_(model, sparsity=0.7, min_size=0)
    deepzip.quantize_(model, bits=4, min_size=0)
    return model


def dense_from_parametrization(module: nn.Module) -> torch.Tensor:
    """centroids[codes] where mask, else 0: the paper's shared weight, rebuilt by hand."""
    t = module.parametrizations.weight[0]
    return torch.where(t.mask, t.centroids.detach()[t.codes.long()], torch.zeros(()))


def test_save_load_round_trip_bit_exact(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    size = deepzip.save(quantized, path)
    assert size == os.path.getsize(path)
    sd = deepzip.load(path)
    plain_keys = set(make_model().state_dict())
    assert set(sd) == plain_keys == {f"{i}.{p}" for i in LAYERS for p in ("weight", "bias")}
    for name in LAYERS:
        module = quantized[int(name)]
        weight = sd[f"{name}.weight"]
        assert weight.dtype == torch.float32 and weight.shape == module.weight.shape
        assert torch.equal(weight, module.weight.detach())
        assert torch.equal(weight, dense_from_parametrization(module))
        assert torch.equal(sd[f"{name}.bias"], module.bias.detach())
        # Pruned entries are exact zeros.
        mask = module.parametrizations.weight[0].mask
        assert torch.count_nonzero(weight[~mask]) == 0


def test_loaded_state_dict_drives_a_plain_model(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    deepzip.save(quantized, path)
    fresh = make_model()
    fresh.load_state_dict(deepzip.load(path), strict=True)
    x = make_input()
    with torch.no_grad():
        assert torch.equal(fresh(x), quantized(x))


def test_file_structure(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    size = deepzip.save(quantized, path)
    data = path.read_bytes()
    assert len(data) == size
    assert data[:8] == b"\x89DZIP\r\n\x1a"
    model = fileformat.read(path)
    flags = {r.name: r.flags for r in fileformat.open_file(path).header.records}
    for name in LAYERS:
        record = model.tensors[f"{name}.weight"]
        assert isinstance(record, CodebookTensor)
        t = quantized[int(name)].parametrizations.weight[0]
        # The file keeps the centroids that some kept weight uses, in their order.
        used = torch.unique(t.codes[t.mask].long())
        assert len(t.centroids) <= 16 and len(used) == len(t.centroids)  # quantize_ keeps only used centroids
        assert record.codebook.tolist() == t.centroids.detach()[used].tolist()
        assert record.codebook[record.codes].tolist() == t.centroids.detach()[t.codes[t.mask].long()].tolist()
        # Positions as gaps of a width in 1..12, or as significance flags (no width).
        assert (record.index_bits is None) == bool(flags[f"{name}.weight"] & FLAG_SIGNIFICANCE)
        assert record.index_bits is None or 1 <= record.index_bits <= 12
        assert record.positions.tolist() == torch.nonzero(t.mask.flatten()).flatten().tolist()
        assert isinstance(model.tensors[f"{name}.bias"], RawTensor)


def test_save_fixed_index_bits(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    deepzip.save(quantized, path, index_bits={"0": 5, "4": 1})
    model = fileformat.read(path)
    assert model.tensors["0.weight"].index_bits == 5
    assert model.tensors["4.weight"].index_bits == 1
    # The byte b of the 0.weight record (spec, version 2: after encoding, the varint size,
    # the crc and k) is 5 as well. The header is at the end of the file.
    data = path.read_bytes()
    name = b"0.weight"
    at = data.rindex(struct.pack("<H", len(name)) + name) + 2 + len(name)
    ndim = data[at + 1]
    size_at = at + 2 + 4 * ndim + 1
    while data[size_at] & 0x80:  # the varint's continuation bytes
        size_at += 1
    params = size_at + 1 + 4
    assert data[params + 2] == 5
    assert torch.equal(deepzip.load(path)["0.weight"], quantized[0].weight.detach())


def test_save_refuses_overwrite(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    path.write_bytes(b"keep me")
    with pytest.raises(DeepzipError):
        deepzip.save(quantized, path)
    assert path.read_bytes() == b"keep me"
    size = deepzip.save(quantized, path, overwrite=True)
    assert os.path.getsize(path) == size
    assert sorted(os.listdir(tmp_path)) == ["model.dzip"]


def test_pruned_only_model_saves_raw(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    deepzip.prune_(model, sparsity=0.7, min_size=0)
    path = tmp_path / "pruned.dzip"
    size = deepzip.save(model, path)
    assert size == os.path.getsize(path)
    stored = fileformat.read(path)
    sd = deepzip.load(path)
    assert set(sd) == set(make_model().state_dict())
    for name in LAYERS:
        module = model[int(name)]
        assert isinstance(stored.tensors[f"{name}.weight"], RawTensor)
        mask = module.parametrizations.weight[0].mask
        expected = torch.where(mask, module.parametrizations.weight.original.detach(), torch.zeros(()))
        assert torch.equal(sd[f"{name}.weight"], expected)
        assert torch.equal(sd[f"{name}.weight"], module.weight.detach())
        assert torch.equal(sd[f"{name}.bias"], module.bias.detach())
    fresh = make_model()
    fresh.load_state_dict(sd, strict=True)
    x = make_input(2)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_plain_model_saves_raw(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    path = tmp_path / "plain.dzip"
    deepzip.save(model, path)
    sd = deepzip.load(path)
    ref = model.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_save_compressed_model_directly(quantized, tmp_path):
    compressed = deepzip.export(quantized)
    a, b = tmp_path / "a.dzip", tmp_path / "b.dzip"
    deepzip.save(compressed, a)
    deepzip.save(quantized, b)
    assert a.read_bytes() == b.read_bytes()


def test_load_missing_file(tmp_path):
    with pytest.raises(DeepzipError):
        deepzip.load(tmp_path / "missing.dzip")


def test_load_damaged_file(quantized, tmp_path):
    path = tmp_path / "model.dzip"
    deepzip.save(quantized, path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(deepzip.FormatError):
        deepzip.load(path)


@pytest.mark.parametrize("bits", [13, 16])
def test_save_refuses_out_of_range_index_bits(quantized, tmp_path, bits):
    """save(index_bits={"0": 13}) refuses (the format allows 1..12) rather than write a dead file."""
    path = tmp_path / "model.dzip"
    try:
        deepzip.save(quantized, path, index_bits={"0": bits})
    except DeepzipError:
        assert not path.exists()
        return
    deepzip.load(path)  # if saving succeeds, the file must load


def test_save_zero_index_bits_raises_deepzip_error(quantized, tmp_path):
    """A bad user setting is a DeepzipError (errors.py), not a bare ValueError."""
    with pytest.raises(DeepzipError):
        deepzip.save(quantized, tmp_path / "model.dzip", index_bits={"0": 0})


def test_an_index_bits_pattern_that_matches_no_quantized_layer_is_an_error(quantized, tmp_path):
    with pytest.raises(ConfigError, match="index_bits: pattern 'fcx' matches no tensor"):
        deepzip.save(quantized, tmp_path / "typo.dzip", index_bits={"fcx": 5})
    assert not (tmp_path / "typo.dzip").exists()


def test_a_12_bit_codebook_with_fillers_saves_and_decodes(tmp_path):
    # 4096 centroids plus the filler symbol: 4097 code symbols, past 12-bit Huffman codes.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 256))
    with torch.no_grad():  # uniform survivors, so that every one of the 4096 centroids is used
        model[0].weight.uniform_(-1, 1).mul_(torch.rand(256, 512) > 0.2)
    deepzip.prune_(model, 0.2)  # prunes exactly the zeros: random positions, random gaps
    deepzip.quantize_(model, 12)
    path = tmp_path / "wide.dzip"
    deepzip.save(model, path, index_bits={"0": 2})  # 2-bit gaps: fillers everywhere
    record = fileformat.read(path).tensors["0.weight"]
    assert len(record.codebook) == 4096
    assert torch.equal(deepzip.load(path)["0.weight"], model[0].weight.detach())


def test_float16_codebooks_halve_the_codebook_bytes_and_decode_to_what_the_model_computes(quantized, tmp_path):
    before = deepzip.save(quantized, tmp_path / "float32.dzip")
    entries = {name: quantized[int(name)].parametrizations.weight[0].centroids.numel() for name in LAYERS}
    deepzip.train.export.round_codebooks_(quantized, torch.float16)
    for name in LAYERS:
        centroids = quantized[int(name)].parametrizations.weight[0].centroids.detach()
        assert centroids.dtype == torch.float32 and torch.equal(centroids, centroids.half().float())
    after = deepzip.save(quantized, tmp_path / "float16.dzip")
    # Each kept centroid (4 bytes) now costs 2; nothing else changes.
    assert before - after == 2 * sum(entries.values())
    sd = deepzip.load(tmp_path / "float16.dzip")
    for name in LAYERS:
        assert torch.equal(sd[f"{name}.weight"], quantized[int(name)].weight.detach())


def test_a_codebook_beyond_float16s_range_stays_float32(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight.mul_(1e6)  # centroids near 1e5: float16 would make them infinite
    deepzip.quantize_(model, bits=2, min_size=0)
    centroids = model[0].parametrizations.weight[0].centroids
    kept = centroids.detach().clone()
    deepzip.train.export.round_codebooks_(model, torch.float16)
    assert torch.equal(centroids.detach(), kept)


def _plain_bias_model(bias: torch.Tensor) -> nn.Module:
    model = nn.Linear(4, bias.numel())
    with torch.no_grad():
        model.bias = nn.Parameter(bias)
    return model


def test_a_mostly_zero_bias_is_stored_sparsely_and_decodes_bit_for_bit(tmp_path):
    bias = torch.zeros(500)
    bias[::7] = torch.randn(72)
    bias[3] = -0.0  # a signed zero must come back signed
    model = _plain_bias_model(bias)
    record = deepzip.train.export.export(model).tensors["bias"]
    assert isinstance(record, CodebookTensor)
    size = deepzip.save(model, tmp_path / "sparse.dzip")
    raw = deepzip.save(deepzip.compressed.CompressedModel({"weight": RawTensor(model.weight.detach()), "bias": RawTensor(bias)}), tmp_path / "raw.dzip")
    # 72 values and their positions, against 2,000 raw bytes, which version 5 codes as byte
    # planes (most bytes are zeros): the sparse form is still the smaller.
    assert size < raw
    decoded = deepzip.load(tmp_path / "sparse.dzip")["bias"]
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded.view(torch.int32), bias.view(torch.int32))  # the bits, signed zero included


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_sparse_bias_keeps_its_half_precision_dtype(tmp_path, dtype):
    bias = torch.zeros(300, dtype=dtype)
    bias[::10] = torch.randn(30).to(dtype)
    model = _plain_bias_model(bias)
    deepzip.save(model, tmp_path / "m.dzip")
    decoded = deepzip.load(tmp_path / "m.dzip")["bias"]
    assert decoded.dtype == dtype and torch.equal(decoded, bias)


def test_a_bias_without_zeros_stays_raw():
    model = _plain_bias_model(torch.randn(50))
    assert isinstance(deepzip.train.export.export(model).tensors["bias"], RawTensor)
