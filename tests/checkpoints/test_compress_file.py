"""Streaming compression and decompression of checkpoints: jobs, shards, limits, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import deepzip
from deepzip import container
from deepzip.checkpoints.compress import compress_checkpoint, compress_file, settings
from deepzip.checkpoints.read import read_checkpoint
from deepzip.cli import main
from deepzip.compressed import CodebookTensor, CompressedModel


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, prog_name="deepzip")


@pytest.fixture
def sharded(tmp_path):
    """A transformers-style directory: two safetensors shards with an index, fp16 and fp32, a tokenizer subfolder."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embed.weight": torch.randn(2048, 256, generator=g).half(),  # 1 MiB
        "layers.0.fc.weight": torch.randn(1024, 256, generator=g),  # 1 MiB
        "layers.0.fc.bias": torch.randn(1024, generator=g),
        "layers.1.fc.weight": torch.randn(256, 1024, generator=g).to(torch.bfloat16),
        "norm.weight": torch.ones(256),
    }
    root = tmp_path / "model"
    (root / "tokenizer").mkdir(parents=True)
    shards = {"model-00001-of-00002.safetensors": ["embed.weight", "layers.0.fc.weight"], "model-00002-of-00002.safetensors": ["layers.0.fc.bias", "layers.1.fc.weight", "norm.weight"]}
    for shard, names in shards.items():
        save_file({n: tensors[n] for n in names}, root / shard, metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {n: shard for shard, names in shards.items() for n in names}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text('{"model_type": "toy"}')
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return root, tensors


def test_the_bytes_do_not_depend_on_the_job_count(sharded, tmp_path):
    root, _ = sharded
    merged = settings(sparsity={"layers.*": 0.5}, bits=4)
    one, summary = compress_file(root, tmp_path / "one.dzip", merged, jobs=1)
    two, _ = compress_file(root, tmp_path / "two.dzip", merged, jobs=2)
    assert (tmp_path / "one.dzip").read_bytes() == (tmp_path / "two.dzip").read_bytes()
    assert one == two == (tmp_path / "one.dzip").stat().st_size
    assert {row.name for row in summary.compressed} == {"embed.weight", "layers.0.fc.weight", "layers.1.fc.weight"}
    # The same records as compressing the loaded checkpoint in memory.
    in_memory = compress_checkpoint(read_checkpoint(root), sparsity={"layers.*": 0.5}, bits=4)
    streamed = container.read(tmp_path / "one.dzip")
    assert streamed.files == {"config.json": b'{"model_type": "toy"}', "tokenizer/vocab.txt": b"[PAD]\n[UNK]\n"}
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name


def test_a_dense_tensor_is_stored_without_positions(sharded, tmp_path):
    root, tensors = sharded
    compress_file(root, tmp_path / "m.dzip", settings(bits=4))
    header = container.open_file(tmp_path / "m.dzip").header
    embed = next(r for r in header.records if r.name == "embed.weight")
    assert embed.index_bits == 0 and embed.gap_bytes == 0 and embed.kept == 2048 * 256
    # 4-bit codes, Huffman-coded: under 4 bits per weight all told, tables and codebook included.
    assert 8 * embed.size / (2048 * 256) < 4.0


def test_cli_compress_jobs_and_sharded_decompress(sharded, tmp_path):
    root, tensors = sharded
    result = run("compress", root, "-o", tmp_path / "m.dzip", "--bits", "5", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "compress: 3 tensors compressed, 2 left raw" in result.output
    result = run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "out", "--shard-size", "1.5MiB")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((tmp_path / "out" / s).stat().st_size <= 1.5 * 2**20 + 4096 for s in shards)
    decoded = deepzip.load(tmp_path / "m.dzip")
    back = {}
    for shard in shards:
        back |= load_file(tmp_path / "out" / shard)
    assert set(back) == set(tensors)
    assert all(torch.equal(back[n], decoded[n]) for n in back)
    assert (tmp_path / "out" / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
    result = run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "x", "--shard-size", "12")
    assert result.exit_code == 2 and "--shard-size" in result.output


def bomb(path: Path) -> Path:
    """A small valid file declaring a 128 GiB fp32 tensor of fillers (12-bit gaps, 2 bits each)."""
    shape = (1 << 20, 1 << 15)
    record = CodebookTensor(shape, torch.float32, np.zeros(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16), 12)
    container.write(CompressedModel({"huge.weight": record}), path)
    return path


def test_a_decompression_bomb_is_refused_with_one_line(tmp_path):
    path = bomb(tmp_path / "bomb.dzip")
    assert path.stat().st_size < 4 << 20
    with pytest.raises(deepzip.FormatError, match=r"'huge.weight': decodes to 128.00 GiB .* limit of 64.00 GiB"):
        deepzip.load(path)
    result = run("decompress", path, "-o", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("deepzip: error: tensor 'huge.weight': decodes to 128.00 GiB") and "--max-decoded-size" in line
    assert not (tmp_path / "out").exists()
    # A lower cap is the caller's to set, too.
    with pytest.raises(deepzip.FormatError, match="limit of 1,000 bytes"):
        container.read(tmp_path / "bomb.dzip", max_decoded_size=1000)


def test_info_imports_neither_torch_nor_numba(tmp_path):
    path = tmp_path / "m.dzip"
    container.write(CompressedModel({"w": CodebookTensor((64, 64), torch.float32, np.ones(2, np.float32), None, np.zeros(4096, np.uint8))}), path)
    code = (
        "import sys; from deepzip.cli import main; main(['info', sys.argv[1]]); "
        "print('heavy:', sorted(m for m in ('torch', 'numba', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert "w " in out and out.strip().endswith("heavy: []"), out


def test_cli_keeps_subfolders_and_refuses_a_symlink_out_of_the_model(sharded, tmp_path):
    root, _ = sharded
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (root / "id_rsa").symlink_to(secret)
    result = run("compress", root, "-o", tmp_path / "m.dzip")  # the output holds stderr's note too
    assert result.exit_code == 0, result.output
    assert "not carried" in result.output and "id_rsa: symlink to a path outside the model directory" in result.output
    files = container.read(tmp_path / "m.dzip").files
    assert set(files) == {"config.json", "tokenizer/vocab.txt"}
    assert b"PRIVATE KEY" not in (tmp_path / "m.dzip").read_bytes()
