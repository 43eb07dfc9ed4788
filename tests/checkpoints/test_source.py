"""The lazy checkpoint source: every kind, one tensor at a time, memory-mapped torch files, walking directories."""

import json
import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepzip.checkpoints import group_tied, open_checkpoint, read_checkpoint
from deepzip.checkpoints.directory import OUTSIDE
from deepzip.errors import ConfigError, DeepzipError

torch.set_num_threads(1)


def state_dict():
    g = torch.Generator().manual_seed(0)
    return {
        "fc1.weight": torch.randn(48, 32, generator=g),
        "fc1.bias": torch.randn(48, generator=g).half(),
        "fc2.weight": torch.randn(32, 48, generator=g).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def model_dir(path, sd=None, weights="model.safetensors"):
    """A transformers-style directory: config.json and `sd` in one weights file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "test"}')
    sd = state_dict() if sd is None else sd
    if weights.endswith(".safetensors"):
        save_file(sd, path / weights)
    else:
        torch.save(sd, path / weights)
    return path


def sharded_dir(path, save, suffix, index):
    """Two shards and their index, as save_pretrained writes them."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    sd, weight_map = state_dict(), {}
    names = sorted(sd)
    for i, part in enumerate((names[:2], names[2:]), 1):
        shard = f"model-{i:05d}-of-00002{suffix}"
        save({n: sd[n] for n in part}, path / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (path / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


LAYOUTS = {
    "safetensors file": lambda p: (save_file(state_dict(), p / "m.safetensors"), p / "m.safetensors")[1],
    "torch file": lambda p: (torch.save(state_dict(), p / "m.pt"), p / "m.pt")[1],
    "training checkpoint": lambda p: (torch.save({"model": state_dict(), "epoch": 2}, p / "m.ckpt"), p / "m.ckpt")[1],
    "model.safetensors": lambda p: model_dir(p / "m"),
    "pytorch_model.bin": lambda p: model_dir(p / "m", weights="pytorch_model.bin"),
    "safetensors shards": lambda p: sharded_dir(p / "m", save_file, ".safetensors", "model.safetensors.index.json"),
    "torch shards": lambda p: sharded_dir(p / "m", torch.save, ".bin", "pytorch_model.bin.index.json"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lazy_reading_matches_read_checkpoint(tmp_path, layout):
    path = LAYOUTS[layout](tmp_path)
    whole = read_checkpoint(path)
    with open_checkpoint(path) as source:
        assert source.path == path and source.kind == whole.kind
        assert source.names == tuple(sorted(state_dict()))
        assert source.files == whole.files and tuple(source.skipped) == whole.skipped
        for name in source.names:
            expected = state_dict()[name]
            assert source.meta(name) == (expected.dtype, tuple(expected.shape))
            tensor = source.tensor(name)
            assert (
                tensor.dtype == expected.dtype and torch.equal(tensor, expected) and torch.equal(whole.state_dict[name], expected)
            )
        assert source.ties == {name: name for name in source.names}
    with pytest.raises(DeepzipError, match="closed"):
        source.tensor("fc1.weight")


def test_unknown_tensor_name(tmp_path):
    save_file(state_dict(), tmp_path / "m.safetensors")
    with open_checkpoint(tmp_path / "m.safetensors") as source, pytest.raises(ConfigError, match="no tensor named 'nope'"):
        source.tensor("nope")


def mapped_files(pointer):
    """The files whose memory mapping holds address `pointer` in this process (Linux)."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= pointer < end and len(fields) == 6:
            found.append(fields[5])
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_a_torch_files_tensors_are_memory_mapped_not_loaded(tmp_path):
    # A tensor whose bytes live in the file's mapping was never copied into memory: a
    # plain torch.load would put it on the heap, and this would fail.
    torch.save({"big": torch.randn(1 << 20), "small": torch.zeros(3)}, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as source:
        tensor = source.tensor("big")
        assert mapped_files(tensor.data_ptr()) == [str(tmp_path / "m.pt")]
    plain = torch.load(tmp_path / "m.pt", weights_only=True)["big"]
    assert mapped_files(plain.data_ptr()) != [str(tmp_path / "m.pt")]  # the control
    # Writing to a mapped tensor never reaches the file (the mapping is private).
    tensor.add_(1)
    assert torch.equal(read_checkpoint(tmp_path / "m.pt").state_dict["big"], plain)


def test_a_legacy_torch_file_is_still_read(tmp_path):
    # torch.save's format before 1.6 cannot be memory-mapped: it is loaded whole.
    torch.save(state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "old.pt") as source:
        assert torch.equal(source.tensor("fc1.weight"), state_dict()["fc1.weight"])


def test_ties_of_a_torch_file(tmp_path):
    emb = torch.randn(16, 8)
    sd = {"emb.weight": emb, "head.weight": emb, "head.bias": torch.zeros(16)}
    torch.save(sd, tmp_path / "m.pt")
    with open_checkpoint(tmp_path / "m.pt") as source:
        assert (
            source.ties == group_tied(sd) == {"emb.weight": "emb.weight", "head.weight": "emb.weight", "head.bias": "head.bias"}
        )
        assert source.tensor("head.weight").data_ptr() == source.tensor("emb.weight").data_ptr()


def _sum_in_worker(source, name):
    return float(source.tensor(name).float().sum())


def test_a_worker_process_reopens_the_source_from_its_path(tmp_path, monkeypatch):
    save_file(state_dict(), tmp_path / "m.safetensors")
    source = open_checkpoint(tmp_path / "m.safetensors")
    copy = pickle.loads(pickle.dumps(source))
    assert copy is not source and copy.names == source.names
    monkeypatch.chdir(tmp_path)  # a relative path given is made absolute
    relative = open_checkpoint("m.safetensors")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_sum_in_worker, relative, "fc2.weight").result() == float(state_dict()["fc2.weight"].float().sum())


# ---------------------------------------------------------------- directories


def test_subdirectories_travel_and_weights_anywhere_stay(tmp_path):
    # sentence-transformers' layout: modules in numbered subdirectories.
    directory = model_dir(tmp_path / "m")
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (directory / "tokenizer" / "deep").mkdir(parents=True)
    (directory / "tokenizer" / "vocab.txt").write_bytes(b"[PAD]\n\xff\n")
    (directory / "tokenizer" / "deep" / "merges.txt").write_text("a b\n")
    (directory / "2_Dense").mkdir()
    save_file({"w": torch.zeros(2)}, directory / "2_Dense" / "model.safetensors")
    (directory / ".git" / "objects").mkdir(parents=True)
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (directory / "empty").mkdir()
    (directory / "pytorch_model.bin").write_bytes(b"another format's copy, never loaded")
    with open_checkpoint(directory) as source:
        assert source.files == {
            "config.json": b'{"model_type": "test"}',
            "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
            "tokenizer/deep/merges.txt": b"a b\n",
            "tokenizer/vocab.txt": b"[PAD]\n\xff\n",
        }
        assert list(source.skipped) == [".git/", "2_Dense/model.safetensors", "empty/", "pytorch_model.bin"]
        assert "hidden" in source.skipped[".git/"] and "weights" in source.skipped["2_Dense/model.safetensors"]
    assert read_checkpoint(directory).skipped == (".git/", "2_Dense/model.safetensors", "empty/", "pytorch_model.bin")


def test_symlinks_out_of_the_directory_are_refused_and_links_inside_followed(tmp_path):
    outside = tmp_path / "home"
    (outside / ".ssh").mkdir(parents=True)
    (outside / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    directory = model_dir(tmp_path / "m")
    (directory / "tokenizer").mkdir()
    (directory / "tokenizer" / "vocab.txt").write_text("hello\n")
    (directory / "id_rsa").symlink_to(outside / ".ssh" / "id_rsa")
    (directory / "ssh").symlink_to(outside / ".ssh")  # a directory link out: not entered
    (directory / "tokenizer" / "up").symlink_to(Path("../../home/.ssh/id_rsa"))  # relative, still out
    (directory / "vocab.txt").symlink_to(Path("tokenizer/vocab.txt"))  # inside: followed
    (directory / "tok").symlink_to(Path("tokenizer"))  # a directory inside: followed
    (directory / "tokenizer" / "loop").symlink_to(Path(".."))  # would walk forever
    (directory / "dangling").symlink_to(Path("nothing-here"))
    os.mkfifo(directory / "pipe")  # reading it would block
    with open_checkpoint(directory) as source:
        assert source.files == {
            "config.json": b'{"model_type": "test"}',
            "tok/vocab.txt": b"hello\n",
            "tokenizer/vocab.txt": b"hello\n",
            "vocab.txt": b"hello\n",
        }
        assert source.skipped["id_rsa"] == OUTSIDE == "symlink to a path outside the model directory, not read"
        assert source.skipped["ssh"] == source.skipped["tokenizer/up"] == source.skipped["tok/up"] == OUTSIDE
        assert "contains it" in source.skipped["tokenizer/loop/"] and "broken" in source.skipped["dangling"]
        assert "not a regular file" in source.skipped["pipe"]
    assert all(b"PRIVATE" not in data for data in source.files.values())


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model-00001-of-00001.safetensors"])
def test_weights_or_config_linked_from_outside_are_an_error(tmp_path, name):
    save_file(state_dict(), tmp_path / "elsewhere.safetensors")
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    if name.startswith("model-"):  # a shard the index names
        weight_map = dict.fromkeys(state_dict(), name)
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        save_file(state_dict(), directory / "model.safetensors")
    (directory / name).unlink(missing_ok=True)
    (directory / name).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ConfigError, match=f"{name}: symlink to a path outside the model directory") as info:
        open_checkpoint(directory)
    assert "\n" not in str(info.value)


def test_hugging_face_cache_snapshot_with_subdirectories(tmp_path):
    repo = tmp_path / "models--org--name"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abcd"
    (snapshot / "1_Pooling").mkdir(parents=True)
    blobs.mkdir()
    save_file(state_dict(), blobs / "e3b0")
    (blobs / "c4ca").write_text('{"model_type": "test"}')
    (blobs / "a87f").write_text('{"pooling": "mean"}')
    (tmp_path / "secret").write_text("no")
    (snapshot / "model.safetensors").symlink_to(Path("../../blobs/e3b0"))
    (snapshot / "config.json").symlink_to(Path("../../blobs/c4ca"))
    (snapshot / "1_Pooling" / "config.json").symlink_to(Path("../../../blobs/a87f"))
    (snapshot / "secret").symlink_to(tmp_path / "secret")  # out of the repo: still refused
    (snapshot / "refs").symlink_to(repo)  # a directory link into the repo: refused too
    with open_checkpoint(snapshot) as source:
        assert source.files == {"config.json": b'{"model_type": "test"}', "1_Pooling/config.json": b'{"pooling": "mean"}'}
        assert source.skipped == {"refs": OUTSIDE, "secret": OUTSIDE}
        assert torch.equal(source.tensor("fc1.weight"), state_dict()["fc1.weight"])


def test_too_deep_directories_are_not_entered(tmp_path):
    directory = model_dir(tmp_path / "m")
    deep = directory.joinpath(*[f"d{i}" for i in range(16)])
    deep.mkdir(parents=True)
    (deep.parent / "ok.txt").write_text("15 directories + the file: 16 parts")
    (deep / "too-deep.txt").write_text("17 parts")
    with open_checkpoint(directory) as source:
        assert "/".join(f"d{i}" for i in range(15)) + "/ok.txt" in source.files
        assert list(source.skipped) == ["/".join(f"d{i}" for i in range(16)) + "/"]
