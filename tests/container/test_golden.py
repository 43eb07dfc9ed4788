"""Compatibility: every .dzip format version deepzip wrote stays readable, bit for bit.

tests/container/golden/v1.dzip was written by deepzip 0.1 (format version 1) and v2.dzip by
`python tests/container/test_golden.py` (version 2, which adds a dense record); each is
committed with the tensors it must decode to (vN-expected.safetensors, made from the
records in memory, not from the file). Never regenerate a .dzip after a format change: a
later deepzip must still read these files.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor

GOLDEN = Path(__file__).parent / "golden"
FILES = {"config.json": json.dumps({"model_type": "toy", "hidden_size": 8}).encode(), "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n"}


def build_golden_model(version: int = 1) -> CompressedModel:
    """Hand-built records (no k-means), so the content never depends on a training run."""
    rng = np.random.default_rng(2016)

    def codebook_tensor(shape, density, k, dtype, index_bits=None):
        numel = int(np.prod(shape))
        positions = np.flatnonzero(rng.random(numel) < density).astype(np.int64)
        codes = rng.integers(0, k, positions.size).astype(np.uint16)
        codebook = np.sort(rng.normal(size=k)).astype(np.float32)
        return CodebookTensor(tuple(shape), dtype, codebook, positions, codes, index_bits)

    embedding = codebook_tensor((50, 8), 0.3, 16, torch.float32)
    return CompressedModel(
        {
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
        }
        | ({"dense.weight": dense_tensor(rng)} if version >= 2 else {}),
        dict(FILES),
    )


def dense_tensor(rng) -> CodebookTensor:
    """Every position kept: version 2 stores it with no position stream."""
    codes = rng.integers(0, 6, 24 * 10).astype(np.uint8)
    return CodebookTensor((24, 10), torch.float16, np.sort(rng.normal(size=6)).astype(np.float32), None, codes)


@pytest.mark.parametrize("version", [1, 2])
def test_golden_file_decodes_to_its_expected_tensors(version):
    data = (GOLDEN / f"v{version}.dzip").read_bytes()
    assert data[8] == version
    model = container.from_bytes(data)
    expected = load_file(GOLDEN / f"v{version}-expected.safetensors")
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), name
    assert state["embed.weight"] is state["head.weight"]
    assert model.files == FILES


def test_golden_file_is_what_this_version_writes():
    # Not a compatibility requirement (a later writer may encode better), but while the
    # format is version 2 a change here means the writer changed: look before updating.
    assert container.to_bytes(build_golden_model(2)) == (GOLDEN / "v2.dzip").read_bytes()


if __name__ == "__main__":
    model = build_golden_model(2)
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "v2.dzip").write_bytes(container.to_bytes(model))
    # From the records in memory, so that the file is checked against an independent decode.
    # safetensors refuses shared storage: store the tied tensor's copy under each name.
    expected = {name: record.to_dense().clone().contiguous() for name, record in model.tensors.items()}
    save_file(expected, GOLDEN / "v2-expected.safetensors")
    print("wrote", sorted(p.name for p in GOLDEN.iterdir()))
