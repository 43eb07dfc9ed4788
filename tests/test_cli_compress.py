"""`deepzip compress` and `deepzip decompress`: end to end, and one line with the right exit code per error."""

import os
import re

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from torch import nn

import deepzip
from deepzip.cli import main

torch.set_num_threads(1)


def run(*args):
    # catch_exceptions=False: an exception that escapes the CLI fails the test outright.
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, prog_name="deepzip")


def one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def small(tmp_path):
    """A small fp32 + fp16 safetensors file."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "fc1.weight": torch.randn(64, 32, generator=g),
        "fc1.bias": torch.randn(64, generator=g),
        "fc2.weight": torch.randn(32, 64, generator=g).half(),
    }
    save_file(sd, tmp_path / "small.safetensors")
    return tmp_path / "small.safetensors", sd


def test_compress_and_decompress_a_safetensors_file(small, tmp_path):
    path, sd = small
    result = run("compress", path, "-o", tmp_path / "m.dzip", "--sparsity", "0.5", "--bits", "fc2=4", "--bits", "6")
    assert result.exit_code == 0, result.output
    assert re.search(r"^fc1\.weight +2,048 +50\.0% +6 ", result.output, re.M)
    assert re.search(r"^fc2\.weight +2,048 +50\.0% +4 ", result.output, re.M)
    # The summary says what became of every tensor, and why one stayed raw.
    assert "compress: 2 tensors compressed, 1 left raw" in result.output
    assert re.search(r"^ +fc1\.bias +64 +1-D$", result.output, re.M)
    assert re.search(r"^ +fc1\.weight +64x32 +kept 50\.00%, 6 bits", result.output, re.M)
    size = (tmp_path / "m.dzip").stat().st_size
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"{path}: 16,640 bytes fp32 -> {size:,} bytes (")
    assert "12,544 bytes in the input's dtypes" in last  # fc2 is fp16: the honest ratio too

    result = run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'out.safetensors'} (")
    dense = load_file(tmp_path / "out.safetensors")
    decoded = deepzip.load(tmp_path / "m.dzip")
    assert {n: t.dtype for n, t in dense.items()} == {n: t.dtype for n, t in sd.items()}
    assert all(torch.equal(dense[n], decoded[n]) for n in sd)
    assert torch.equal(dense["fc1.bias"], sd["fc1.bias"])


def test_compress_with_a_recipe_file_and_include(small, tmp_path):
    path, _ = small
    recipe = tmp_path / "r.yaml"
    recipe.write_text("layers:\n  fc1: {sparsity: 0.75, bits: 3}\n  fc2: {bits: 5}\n")
    result = run("compress", path, "-o", tmp_path / "m.dzip", "--recipe", recipe, "--include", "fc1")
    assert result.exit_code == 0, result.output
    assert re.search(r"^fc1\.weight +2,048 +25\.0% +3 ", result.output, re.M)
    assert re.search(r"^fc2\.weight +2,048 +100\.0% +- ", result.output, re.M)  # not included: raw


def test_force_replaces_and_its_absence_protects(small, tmp_path):
    path, _ = small
    (tmp_path / "m.dzip").write_bytes(b"mine")
    result = run("compress", path, "-o", tmp_path / "m.dzip")
    assert result.exit_code == 1 and "--force" in one_error_line(result)
    assert (tmp_path / "m.dzip").read_bytes() == b"mine"
    assert run("compress", path, "-o", tmp_path / "m.dzip", "--force").exit_code == 0

    (tmp_path / "out.safetensors").write_bytes(b"mine")
    result = run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "out.safetensors")
    assert result.exit_code == 1 and "exists" in one_error_line(result)
    assert (tmp_path / "out.safetensors").read_bytes() == b"mine"
    assert run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "out.safetensors", "--force").exit_code == 0


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--sparsity", "1.5"], "sparsity must be a number in [0, 1]"),
        (["--sparsity", "fc1=abc"], "'fc1=abc'"),
        (["--sparsity", "fc1=nan"], "'fc1=nan'"),
        (["--sparsity", "=0.5"], "empty pattern"),
        (["--sparsity", "0.5", "--sparsity", "0.6"], "at most one value without a PATTERN="),
        (["--sparsity", "fc1=0.5", "--sparsity", "fc1=0.6"], "given twice"),
        (["--sparsity", "*=0.5", "--sparsity", "0.6"], "'*' is given too"),
        (["--bits", "0"], "bits must be an integer in 1..12"),
        (["--bits", "fc1=4.5"], "'fc1=4.5'"),
        (["--bits", "13"], "1..12"),
        (["--nope"], "--nope"),
        (["--recipe"], "--recipe"),
    ],
)
def test_usage_errors_exit_2(small, tmp_path, extra, words):
    path, _ = small
    result = run("compress", path, "-o", tmp_path / "m.dzip", *extra)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith("deepzip: usage error:") and words in line
    assert not (tmp_path / "m.dzip").exists()


@pytest.mark.parametrize("args", [["compress", "x.pt"], ["decompress", "x.dzip"], ["compress"], ["decompress"]])
def test_missing_arguments_exit_2(args):
    result = run(*args)
    assert result.exit_code == 2 and one_error_line(result).startswith("deepzip: usage error:")


def write_pickled_model(path):
    torch.save(nn.Linear(2, 2), path)


@pytest.mark.parametrize(
    "make, input_name, extra, words",
    [
        (None, "missing.safetensors", [], "no such file"),
        (write_pickled_model, "model.pt", [], "save model.state_dict()"),
        (lambda p: p.write_bytes(b"junk" * 10), "m.pt", [], "not a readable torch checkpoint"),
        (lambda p: p.write_bytes(b"junk"), "m.onnx", [], "unknown kind of checkpoint"),
        (lambda p: p.mkdir(), "dir", [], "without config.json"),
        ("small", None, ["--sparsity", "nope*=0.5"], "pattern 'nope*' matches no tensor"),
        ("small", None, ["--exclude", "nope"], "pattern 'nope' matches no tensor"),
        ("small", None, ["--recipe", "no-such-recipe"], "not a shipped recipe"),
        ("small", None, ["--recipe", "lenet-5"], "matches no tensor"),
    ],
)
def test_compress_errors_exit_1(small, tmp_path, make, input_name, extra, words):
    if make == "small":
        path = small[0]
    else:
        path = tmp_path / input_name
        if make:
            make(path)
    result = run("compress", path, "-o", tmp_path / "m.dzip", *extra)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith("deepzip: error:") and words in line
    assert not (tmp_path / "m.dzip").exists()


@pytest.mark.parametrize(
    "make, words",
    [
        (None, "no such file"),
        (lambda p: p.write_bytes(b"not a dzip file"), "not a .dzip file"),
    ],
)
def test_decompress_errors_exit_1(tmp_path, make, words):
    if make:
        make(tmp_path / "m.dzip")
    result = run("decompress", tmp_path / "m.dzip", "-o", tmp_path / "out")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith("deepzip: error:") and words in line
    assert not (tmp_path / "out").exists()


def test_transformers_directory_end_to_end(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, max_position_embeddings=64
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "extra").mkdir()  # not carried: the CLI says so

    result = run("compress", tmp_path / "bert", "-o", tmp_path / "bert.dzip", "--sparsity", "encoder.*=0.5", "--bits", "6")
    assert result.exit_code == 0, result.output
    assert "deepzip: note: not carried into" in result.output and "extra/" in result.output
    assert re.search(r"^encoder\.layer\.0\.intermediate\.dense\.weight +2,048 +50\.0% +6 ", result.output, re.M)

    result = run("decompress", tmp_path / "bert.dzip", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert f"wrote {tmp_path / 'out' / 'config.json'}" in result.output
    loaded, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}

    # A .safetensors path gets the weights alone, and the CLI names the files left out.
    result = run("decompress", tmp_path / "bert.dzip", "-o", tmp_path / "w.safetensors")
    assert result.exit_code == 0
    assert "attached files not written (config.json)" in result.output
