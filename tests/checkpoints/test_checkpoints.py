"""Real checkpoints: reading every kind, compress -> .dzip -> decompress, tied tensors, no code run."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import deepzip
from deepzip import container
from deepzip.checkpoints import (
    MAX_ATTACHED_FILE_BYTES,
    Checkpoint,
    compress_checkpoint,
    group_tied,
    read_checkpoint,
    write_checkpoint,
)
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.errors import ConfigError, DeepzipError
from deepzip.train.recipe import parse_recipe

torch.set_num_threads(1)


def state_dict(dtype=torch.float32, seed=0):
    """Two compressible weights (>= 1024 elements), a bias, an int buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(48, 32, generator=g).to(dtype),
        "fc1.bias": torch.randn(48, generator=g).to(dtype),
        "fc2.weight": torch.randn(32, 48, generator=g).to(dtype),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def assert_same(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------- reading


def test_safetensors_file(tmp_path):
    sd = state_dict()
    save_file(sd, tmp_path / "m.safetensors")
    checkpoint = read_checkpoint(tmp_path / "m.safetensors")
    assert checkpoint.kind == "safetensors" and checkpoint.files == {}
    assert_same(dict(sorted(checkpoint.state_dict.items())), dict(sorted(sd.items())))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_torch_files_plain_and_nested(tmp_path, suffix, wrap):
    sd = state_dict()
    # A training checkpoint: the weights nested, beside entries that are not tensors.
    saved = sd if wrap is None else {wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}
    torch.save(saved, tmp_path / f"m{suffix}")
    checkpoint = read_checkpoint(tmp_path / f"m{suffix}")
    assert checkpoint.kind == "torch"
    assert_same(checkpoint.state_dict, sd)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: torch.save({"epoch": 3}, p), "no state dict found"),
        (lambda p: torch.save([torch.zeros(2)], p), "no state dict found"),
        (lambda p: torch.save({}, p), "no state dict found"),
        (lambda p: p.write_bytes(b"not a torch file" * 4), "not a readable torch checkpoint"),
        (lambda p: p.write_bytes(b""), "not a readable torch checkpoint"),
    ],
)
def test_torch_files_without_a_state_dict(tmp_path, make, words):
    path = tmp_path / "m.pt"
    make(path)
    with pytest.raises(DeepzipError, match=words) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_damaged_safetensors_file(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json......}")
    with pytest.raises(DeepzipError, match="not a readable safetensors file"):
        read_checkpoint(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    "name, make, words",
    [
        ("missing.pt", None, "no such file"),
        ("weights.npz", lambda p: p.write_bytes(b"x"), "unknown kind of checkpoint"),
        ("dir", lambda p: p.mkdir(), "without config.json"),
        ("empty-model", lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no weights found"),
    ],
)
def test_paths_that_are_no_checkpoint(tmp_path, name, make, words):
    if make:
        make(tmp_path / name)
    with pytest.raises(ConfigError, match=words) as info:
        read_checkpoint(tmp_path / name)
    assert "\n" not in str(info.value)


def test_a_pickled_model_is_refused_with_the_state_dict_hint(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(ConfigError) as info:
        read_checkpoint(tmp_path / "model.pt")
    message = str(info.value)
    assert "pickled" in message and "torch.nn.modules.linear.Linear" in message
    assert "model.state_dict()" in message and "\n" not in message


class _Payload:
    """Unpickling this calls os.mkdir(marker): the stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_reading_a_malicious_pickle_runs_no_code(tmp_path):
    # Control: a plain unpickling of the same kind of file does run the payload.
    torch.save({"w": torch.zeros(2), "x": _Payload(tmp_path / "control")}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert (tmp_path / "control").exists()

    marker = tmp_path / "marker"
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="will not unpickle"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def write_sharded(directory, sd, shards=2):
    """A transformers-style sharded safetensors directory, written by hand."""
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "test"}')
    names = sorted(sd)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i::shards]}
        save_file(part, directory / shard)
        weight_map.update({n: shard for n in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_safetensors_directory_is_merged(tmp_path):
    sd = state_dict()
    write_sharded(tmp_path / "model", sd)
    (tmp_path / "model" / "tokenizer.json").write_text('{"vocab": {}}')
    (tmp_path / "model" / "training_args.bin").write_bytes(b"a pickled object, never loaded")
    (tmp_path / "model" / "sub").mkdir()
    checkpoint = read_checkpoint(tmp_path / "model")
    assert checkpoint.kind == "transformers"
    assert_same(dict(sorted(checkpoint.state_dict.items())), dict(sorted(sd.items())))
    assert set(checkpoint.files) == {"config.json", "tokenizer.json"}
    assert checkpoint.skipped == ("sub/", "training_args.bin")


def test_shard_index_naming_a_missing_tensor(tmp_path):
    weight_map = write_sharded(tmp_path / "model", state_dict())
    weight_map["extra.weight"] = next(iter(weight_map.values()))
    (tmp_path / "model" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConfigError, match="'extra.weight' is not in its shard"):
        read_checkpoint(tmp_path / "model")


def test_shard_index_cannot_point_outside_the_directory(tmp_path):
    write_sharded(tmp_path / "model", state_dict())
    (tmp_path / "model" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(ConfigError, match="not a file name"):
        read_checkpoint(tmp_path / "model")


def test_large_side_files_are_skipped_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr("deepzip.checkpoints.read.MAX_ATTACHED_FILE_BYTES", 10)
    directory = tmp_path / "model"
    directory.mkdir()
    save_file(state_dict(), directory / "model.safetensors")
    (directory / "config.json").write_text("{}")
    (directory / "big.txt").write_text("x" * 11)
    checkpoint = read_checkpoint(directory)
    assert set(checkpoint.files) == {"config.json"} and checkpoint.skipped == ("big.txt",)
    assert MAX_ATTACHED_FILE_BYTES >= 10 << 20


# ---------------------------------------------------------------- tied tensors


def test_group_tied():
    base = torch.randn(8, 8)
    sd = {
        "head.weight": base,
        "emb.weight": base,  # the same tensor: tied
        "alias.weight": base.view(8, 8),  # another view of the same memory: tied
        "row.weight": base[1:],  # part of it: distinct
        "t.weight": base.t(),  # other strides: distinct
        "half.weight": base.half(),  # a copy: distinct
        "e1": torch.zeros(0),
        "e2": torch.zeros(0),  # empty tensors share the null pointer, but are not ties
    }
    assert group_tied(sd) == {
        "head.weight": "alias.weight",
        "emb.weight": "alias.weight",
        "alias.weight": "alias.weight",
        "row.weight": "row.weight",
        "t.weight": "t.weight",
        "half.weight": "half.weight",
        "e1": "e1",
        "e2": "e2",
    }


def tied_checkpoint(tmp_path, tied=True):
    """A torch.save'd model with an embedding tied to its output layer, read back."""
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(64, 32, generator=g)
    sd = {"emb.weight": emb, "head.weight": emb if tied else emb.clone(), "head.bias": torch.randn(64, generator=g)}
    torch.save(sd, tmp_path / f"tied{tied}.pt")
    return read_checkpoint(tmp_path / f"tied{tied}.pt")


def test_tied_tensors_are_compressed_and_stored_once(tmp_path):
    tied = tied_checkpoint(tmp_path, tied=True)
    assert group_tied(tied.state_dict)["head.weight"] == "emb.weight"  # torch.load keeps the tie
    seen = []
    compressed = compress_checkpoint(tied, bits=4, progress=seen.append)
    assert seen == ["emb.weight", "head.bias"]
    assert compressed.tensors["emb.weight"] is compressed.tensors["head.weight"]
    tied_size = container.write(compressed, tmp_path / "tied.dzip")
    cloned_size = container.write(compress_checkpoint(tied_checkpoint(tmp_path, tied=False), bits=4), tmp_path / "cloned.dzip")
    assert tied_size < cloned_size - 500  # one 2048-weight codebook tensor less

    decoded = deepzip.load(tmp_path / "tied.dzip")
    assert decoded["emb.weight"].untyped_storage().data_ptr() == decoded["head.weight"].untyped_storage().data_ptr()

    written = write_checkpoint(container.read(tmp_path / "tied.dzip"), tmp_path / "out.safetensors")
    dense = load_file(written[0])
    assert set(dense) == {"emb.weight", "head.weight", "head.bias"}
    assert torch.equal(dense["emb.weight"], dense["head.weight"])
    assert torch.equal(dense["emb.weight"], decoded["emb.weight"])


def test_tied_names_are_one_tensor_for_settings(tmp_path):
    checkpoint = tied_checkpoint(tmp_path)
    # Different explicit values for the two names of one tensor: an error naming both.
    with pytest.raises(ConfigError, match="bits: 'emb.weight' is one tensor .* 8 \\(pattern 'emb'\\) and 4 \\(pattern 'head'\\)"):
        compress_checkpoint(checkpoint, bits={"emb": 8, "head": 4})
    # A pattern reaching one name reaches the tensor: both names get it.
    compressed = compress_checkpoint(checkpoint, bits={"head": 3})
    assert compressed.tensors["emb.weight"] is compressed.tensors["head.weight"]
    assert len(compressed.tensors["emb.weight"].codebook) <= 8
    excluded = compress_checkpoint(checkpoint, exclude=["head.weight"])
    assert isinstance(excluded.tensors["emb.weight"], RawTensor) and excluded.tensors["emb.weight"] is excluded.tensors["head.weight"]
    # Both names alike: fine.
    compressed = compress_checkpoint(checkpoint, bits={"emb": 3, "head.weight": 3})
    assert len(compressed.tensors["head.weight"].codebook) <= 8


# ---------------------------------------------------------------- settings


def test_recipe_settings_and_explicit_overrides(tmp_path):
    recipe = parse_recipe("layers:\n  fc1: {sparsity: 0.5, bits: 4, index_bits: 3}\n  fc2: {bits: 3}\n")
    checkpoint = Checkpoint(state_dict())
    from_recipe = compress_checkpoint(checkpoint, recipe)
    fc1, fc2 = from_recipe.tensors["fc1.weight"], from_recipe.tensors["fc2.weight"]
    assert fc1.kept == 48 * 32 // 2 and len(fc1.codebook) <= 16 and fc1.index_bits == 3
    assert fc2.kept == 32 * 48 and len(fc2.codebook) <= 8 and fc2.index_bits is None
    assert isinstance(from_recipe.tensors["fc1.bias"], RawTensor)

    # An explicit pattern wins where it matches; the recipe fills in the rest.
    mixed = compress_checkpoint(checkpoint, recipe, bits={"fc2": 5})
    assert len(mixed.tensors["fc2.weight"].codebook) > 8 and len(mixed.tensors["fc1.weight"].codebook) <= 16
    # A single explicit value replaces the recipe's rules for that setting.
    single = compress_checkpoint(checkpoint, recipe, sparsity=0.75)
    assert single.tensors["fc2.weight"].kept == 32 * 48 // 4


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"sparsity": {"nope*": 0.5}}, "sparsity: pattern 'nope\\*' matches no tensor"),
        ({"exclude": ["nope"]}, "exclude: pattern 'nope' matches no tensor"),
        ({"sparsity": 1.5}, "sparsity: must be a number in \\[0, 1\\]"),
        ({"bits": {"fc1": 0}}, "bits\\['fc1'\\]: must be an integer in 1..12"),
        ({"recipe": parse_recipe("layers:\n  fc1: {quality: 1.0}\n")}, "quality is only supported by prune_"),
        ({"recipe": parse_recipe("layers:\n  conv9: {index_bits: 4}\n")}, "index_bits: pattern 'conv9'"),
        ({"recipe": "no-such-recipe"}, "not a shipped recipe"),
    ],
)
def test_bad_settings_fail_before_any_tensor_is_compressed(kwargs, words):
    seen = []
    with pytest.raises(ConfigError, match=words):
        compress_checkpoint(Checkpoint(state_dict()), progress=seen.append, **kwargs)
    assert seen == []


def test_include_and_exclude():
    compressed = compress_checkpoint(Checkpoint(state_dict()), include=["fc*"], exclude=["fc2"])
    assert isinstance(compressed.tensors["fc1.weight"], CodebookTensor)
    assert isinstance(compressed.tensors["fc2.weight"], RawTensor)


def test_a_dtype_the_format_cannot_store_is_named_up_front():
    sd = {"w": torch.zeros(4, dtype=torch.complex64)}
    with pytest.raises(ConfigError, match="'w': dtype torch.complex64 cannot be stored"):
        compress_checkpoint(Checkpoint(sd))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip_keeps_dtypes(tmp_path, dtype):
    sd = state_dict(dtype)
    save_file(sd, tmp_path / "m.safetensors")
    compressed = compress_checkpoint(read_checkpoint(tmp_path / "m.safetensors"), sparsity=0.5, bits=6)
    container.write(compressed, tmp_path / "m.dzip")
    written = write_checkpoint(container.read(tmp_path / "m.dzip"), tmp_path / "out.safetensors")
    dense = load_file(written[0])
    assert {n: t.dtype for n, t in dense.items()} == {n: t.dtype for n, t in sd.items()}
    for name in ("fc1.bias", "bn.num_batches_tracked"):  # stored raw: bit-exact
        assert torch.equal(dense[name].reshape(-1).view(torch.uint8), sd[name].reshape(-1).view(torch.uint8))
    for name in ("fc1.weight", "fc2.weight"):
        assert torch.equal(dense[name], compressed.tensors[name].to_dense())  # exactly what was encoded
        kept = dense[name] != 0
        assert kept.float().mean() == 0.5
        assert (dense[name][kept].float() - sd[name][kept].float()).abs().max() < 0.1


def test_transformers_directory_round_trip(tmp_path):
    sd = state_dict()
    write_sharded(tmp_path / "model", sd)
    (tmp_path / "model" / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xff raw bytes\n")
    compressed = compress_checkpoint(read_checkpoint(tmp_path / "model"), bits=8)
    container.write(compressed, tmp_path / "m.dzip")
    out = tmp_path / "restored"
    written = write_checkpoint(container.read(tmp_path / "m.dzip"), out)
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors", "vocab.txt"]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vocab.txt"]  # no temporaries left
    assert (out / "vocab.txt").read_bytes() == (tmp_path / "model" / "vocab.txt").read_bytes()
    assert_same(dict(sorted(load_file(out / "model.safetensors").items())), dict(sorted(deepzip.load(tmp_path / "m.dzip").items())))
    # The restored directory is itself a readable checkpoint.
    assert read_checkpoint(out).files == compressed.files


def test_existing_outputs_need_overwrite(tmp_path):
    compressed = compress_checkpoint(Checkpoint(state_dict(), {"config.json": b"{}"}))
    (tmp_path / "m.safetensors").write_bytes(b"old")
    with pytest.raises(DeepzipError, match="exists"):
        write_checkpoint(compressed, tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == b"old"
    write_checkpoint(compressed, tmp_path / "m.safetensors", overwrite=True)
    assert set(load_file(tmp_path / "m.safetensors")) == set(state_dict())

    out = tmp_path / "dir"
    out.mkdir()
    (out / "README.md").write_text("mine")
    with pytest.raises(DeepzipError, match="exists"):
        write_checkpoint(compressed, out)
    write_checkpoint(compressed, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    (out / "pytorch_model.bin").write_bytes(b"stale")
    with pytest.raises(ConfigError, match="other weight files \\(pytorch_model.bin\\)"):
        write_checkpoint(compressed, out, overwrite=True)


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a/../../escape.txt", "a\\..\\escape.txt", "model.safetensors"])
def test_attached_file_names_cannot_escape_the_directory(tmp_path, name):
    compressed = CompressedModel({"w": RawTensor(torch.zeros(2))}, {"config.json": b"{}", name: b"x"})
    with pytest.raises(ConfigError):
        write_checkpoint(compressed, tmp_path / "out" / "model")
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_a_symlinked_subdirectory_cannot_lead_outside(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside)
    compressed = CompressedModel({"w": RawTensor(torch.zeros(2))}, {"config.json": b"{}", "sub/x.txt": b"x"})
    with pytest.raises(ConfigError, match="outside"):
        write_checkpoint(compressed, out, overwrite=True)
    assert list(outside.iterdir()) == [] and sorted(os.listdir(out)) == ["sub"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    compressed = CompressedModel({"w": RawTensor(torch.zeros(2))}, {"config.json": b"{}"})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("deepzip.container.atomic.write_bytes", fail)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(compressed, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_written_files_get_the_usual_permissions(tmp_path):
    # Temporary files are private by default (mkstemp, safetensors): the outputs must not be.
    (tmp_path / "plain").write_bytes(b"")
    usual = (tmp_path / "plain").stat().st_mode & 0o777
    compressed = CompressedModel({"w": RawTensor(torch.zeros(2))}, {"config.json": b"{}"})
    written = write_checkpoint(compressed, tmp_path / "dir") + write_checkpoint(compressed, tmp_path / "w.safetensors")
    assert {p.stat().st_mode & 0o777 for p in written} == {usual}


def test_symlinked_files_are_read_like_the_hugging_face_cache(tmp_path):
    # A hub cache snapshot, <repo>/snapshots/<rev>/, is a directory of links into <repo>/blobs/
    # (links out of a model directory are refused elsewhere: tests/checkpoints/test_source.py).
    blobs, snapshot = tmp_path / "models--org--name" / "blobs", tmp_path / "models--org--name" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    save_file(state_dict(), blobs / "a1")
    (blobs / "b2").write_text('{"model_type": "test"}')
    (snapshot / "model.safetensors").symlink_to(Path("../../blobs/a1"))
    (snapshot / "config.json").symlink_to(Path("../../blobs/b2"))
    checkpoint = read_checkpoint(snapshot)
    assert checkpoint.files == {"config.json": b'{"model_type": "test"}'} and set(checkpoint.state_dict) == set(state_dict())
