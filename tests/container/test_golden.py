"""Compatibility: a .dzip written by deepzip 0.1 (format version 1) stays readable, bit for bit.

tests/container/golden/v1.dzip was written once by `python tests/container/test_golden.py` and is committed with
the tensors it must decode to (tests/container/golden/v1-expected.safetensors). Never regenerate the
.dzip after a format change: a later deepzip must still read this file.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor

GOLDEN = Path(__file__).parent / "golden"
FILES = {"config.json": json.dumps({"model_type": "toy", "hidden_size": 8}).encode(), "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n"}


def build_golden_model() -> CompressedModel:
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
        },
        dict(FILES),
    )


def test_golden_file_decodes_to_its_expected_tensors():
    data = (GOLDEN / "v1.dzip").read_bytes()
    model = container.from_bytes(data)
    expected = load_file(GOLDEN / "v1-expected.safetensors")
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype, name
        assert torch.equal(state[name], tensor), name
    assert state["embed.weight"] is state["head.weight"]
    assert model.files == FILES


def test_golden_file_is_what_this_version_writes():
    # Not a compatibility requirement (a later writer may encode better), but while the
    # format is version 1 a change here means the writer changed: look before updating.
    assert container.to_bytes(build_golden_model()) == (GOLDEN / "v1.dzip").read_bytes()


if __name__ == "__main__":
    model = build_golden_model()
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / "v1.dzip").write_bytes(container.to_bytes(model))
    decoded = container.from_bytes((GOLDEN / "v1.dzip").read_bytes()).state_dict()
    # safetensors refuses shared storage: store the tied tensor's copy under each name.
    save_file({name: tensor.clone().contiguous() for name, tensor in decoded.items()}, GOLDEN / "v1-expected.safetensors")
    print("wrote", sorted(p.name for p in GOLDEN.iterdir()))
