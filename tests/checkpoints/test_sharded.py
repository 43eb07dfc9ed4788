"""The streaming sharded writer: safetensors written by hand, read back by the library and by transformers."""

import json
import os
import struct
import weakref
from itertools import pairwise

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from deepzip import container
from deepzip.checkpoints import (
    compress_checkpoint,
    open_checkpoint,
    plan_shards,
    read_checkpoint,
    write_checkpoint,
    write_sharded,
)
from deepzip.checkpoints.write import MIN_SHARD_BYTES
from deepzip.errors import ConfigError, DeepzipError

torch.set_num_threads(1)
MB = 1 << 20


def tensors():
    """fp32, fp16 and bf16 weights of 0.5-1 MiB each, and small odd-sized tensors between them."""
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(512, 512, generator=g),  # 1 MiB
        "a.mask": torch.rand(7, generator=g) > 0.5,  # 7 bytes: the next tensor must still be aligned
        "b.weight": torch.randn(512, 512, generator=g).half(),  # 0.5 MiB
        "c.weight": torch.randn(512, 512, generator=g).bfloat16(),
        "c.bias": torch.randn(3, generator=g).bfloat16(),
        "d.weight": torch.randn(1024, 512, generator=g),  # 2 MiB: bigger than a shard, alone
        "steps": torch.tensor(7),
        "e.bias": torch.randn(5, generator=g).half(),
    }


def entries_of(sd):
    """The writer's entries for a state dict: (name, dtype, shape) in its order."""
    return [(name, t.dtype, tuple(t.shape)) for name, t in sd.items()]


def bits(tensor):
    """A tensor's raw bytes, to compare bit for bit (NaN-safe, any dtype)."""
    return tensor.reshape(-1).view(torch.uint8)


def test_sharded_output_is_read_back_bit_exact(tmp_path):
    sd = tensors()
    written = write_sharded(tmp_path / "out", entries_of(sd), sd.__getitem__, {"config.json": b"{}"}, shard_bytes=MB + 512)
    shards = sorted(p.name for p in (tmp_path / "out").glob("model-*.safetensors"))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert [p.name for p in written] == shards + ["model.safetensors.index.json", "config.json"]
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", *shards, "model.safetensors.index.json"]  # no temporaries

    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(t.numel() * t.element_size() for t in sd.values())}
    assert set(index["weight_map"]) == set(sd)
    for name, shard in index["weight_map"].items():
        with safe_open(tmp_path / "out" / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            got = f.get_tensor(name)
        assert got.dtype == sd[name].dtype and torch.equal(bits(got), bits(sd[name])), name
    # The plan: greedy in entry order, each shard within shard_bytes unless one tensor alone is bigger.
    by_shard = {}
    for name in sd:
        by_shard.setdefault(index["weight_map"][name], []).append(name)
    assert list(by_shard.values()) == [
        ["a.weight", "a.mask"],
        ["b.weight", "c.weight", "c.bias"],
        ["d.weight"],
        ["steps", "e.bias"],
    ]
    for shard, names in by_shard.items():
        assert len(names) == 1 or sum(sd[n].numel() * sd[n].element_size() for n in names) <= MB + 512
        assert sorted(load_file(tmp_path / "out" / shard)) == sorted(names)


def test_the_shard_plan():
    entry = lambda name, n: (name, torch.float32, (n // 4,))
    plan = plan_shards([entry("a", 600), entry("b", 400), entry("c", 4), entry("d", 2000), entry("e", 12), entry("f", 988)], 1000)
    assert [[e[0] for e in shard] for shard in plan] == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert plan_shards([entry("a", 8)], 1000) == [[entry("a", 8)]]


def test_header_layout_follows_the_format(tmp_path):
    sd = tensors()
    write_sharded(tmp_path / "out", entries_of(sd), sd.__getitem__)
    raw = (tmp_path / "out" / "model.safetensors").read_bytes()  # one shard at the default size
    (length,) = struct.unpack("<Q", raw[:8])
    padded = raw[8 : 8 + length]
    assert length % 8 == 0 and padded.rstrip(b" ").endswith(b"}") and len(padded) - len(padded.rstrip(b" ")) < 8
    header = json.loads(raw[8 : 8 + length])
    assert header.pop("__metadata__") == {"format": "pt"}
    offsets = sorted(h["data_offsets"] for h in header.values())
    assert offsets[0][0] == 0 and offsets[-1][1] == len(raw) - 8 - length
    assert all(a[1] == b[0] for a, b in pairwise(offsets))  # back to back
    for name, h in header.items():  # every tensor aligned to its element size
        assert h["data_offsets"][0] % sd[name].element_size() == 0, name
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_one_tensor_in_memory_at_a_time(tmp_path):
    sd = tensors()
    alive = []

    def produce(name):
        # Reference counting frees a tensor as soon as nothing holds it: no gc needed.
        assert [ref() for ref in alive if ref() is not None] == [], f"a tensor was still held when {name} was produced"
        tensor = sd[name].clone()
        alive.append(weakref.ref(tensor))
        return tensor

    write_sharded(tmp_path / "out", entries_of(sd), produce, shard_bytes=2 * MB)
    assert len(alive) == len(sd)


def test_shards_below_a_mebibyte_are_refused(tmp_path):
    sd = tensors()
    with pytest.raises(ConfigError, match="below the minimum") as info:
        write_sharded(tmp_path / "out", entries_of(sd), sd.__getitem__, shard_bytes=MIN_SHARD_BYTES - 1)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "files, words",
    [
        ({"../escape.txt": b"x"}, "not a plain relative path"),
        ({"model.safetensors.index.json": b"{}"}, "would overwrite the model's weights"),
        ({"model-00001-of-00004.safetensors": b"x"}, "would overwrite the model's weights"),
    ],
)
def test_attached_files_cannot_escape_or_replace_weights(tmp_path, files, words):
    sd = tensors()
    with pytest.raises(ConfigError, match=words):
        write_sharded(tmp_path / "out", entries_of(sd), sd.__getitem__, files, shard_bytes=MB + 512)
    assert os.listdir(tmp_path) == []


def test_a_tensor_unlike_its_entry_fails_and_leaves_nothing(tmp_path):
    sd = tensors()
    with pytest.raises(DeepzipError, match="'a.mask': produced torch.float32 \\(7,\\), but torch.bool \\(7,\\) was planned"):
        write_sharded(tmp_path / "out", entries_of(sd), lambda name: sd[name].float(), shard_bytes=MB + 512)
    assert os.listdir(tmp_path) == []


def test_tied_names_become_copies_and_subdirectories_are_written(tmp_path):
    emb = torch.randn(4, 4)
    sd = {"emb.weight": emb, "head.weight": emb}
    files = {"config.json": b"{}", "1_Pooling/config.json": b'{"mean": true}'}
    write_sharded(tmp_path / "out", entries_of(sd), sd.__getitem__, files)
    loaded = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(loaded["emb.weight"], emb) and torch.equal(loaded["head.weight"], emb)
    assert (tmp_path / "out" / "1_Pooling" / "config.json").read_bytes() == b'{"mean": true}'
    assert read_checkpoint(tmp_path / "out").files == files


def test_writing_into_an_existing_directory(tmp_path):
    sd = tensors()
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("mine")
    with pytest.raises(DeepzipError, match="exists"):
        write_sharded(out, entries_of(sd), sd.__getitem__, shard_bytes=MB + 512)
    write_sharded(out, entries_of(sd), sd.__getitem__, {"tokenizer/vocab.txt": b"a\n"}, shard_bytes=MB + 512, overwrite=True)
    assert (out / "README.md").read_text() == "mine" and (out / "tokenizer" / "vocab.txt").read_bytes() == b"a\n"
    assert set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) == set(sd)
    # Fewer shards now: the old ones would be picked up with the new index, so they are named.
    with pytest.raises(ConfigError, match="other weight files \\(model-00001-of-00004.safetensors"):
        write_sharded(out, entries_of(sd), sd.__getitem__, overwrite=True)
    (out / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        write_sharded(out / "file", entries_of(sd), sd.__getitem__)


# ---------------------------------------------------------------- transformers loads it


def tiny_gpt2(transformers):
    # ~2.2 MB of fp32 weights: several 1 MiB shards. The LM head is tied to the embeddings.
    config = transformers.GPT2Config(
        n_embd=128, n_layer=2, n_head=2, vocab_size=1000, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_transformers_loads_the_sharded_output(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download
    transformers = pytest.importorskip("transformers")
    model = tiny_gpt2(transformers)
    model.save_pretrained(tmp_path / "gpt2")
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))

    # A lossless copy, streamed from the lazy source into 1 MiB shards.
    with open_checkpoint(tmp_path / "gpt2") as source:
        entries = [(name, *source.meta(name)) for name in source.names]
        write_sharded(tmp_path / "copy", entries, source.tensor, source.files, shard_bytes=MB)
    assert len(list((tmp_path / "copy").glob("model-*-of-*.safetensors"))) >= 2
    copy, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "copy", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    with torch.no_grad():
        assert torch.equal(copy.eval()(ids).logits, model(ids).logits)

    # Compressed, then decompressed sharded: equal to the weights deepzip decodes.
    # Two weight matrices compressed are enough to decode codebooks into shards (and fast).
    compressed = compress_checkpoint(read_checkpoint(tmp_path / "gpt2"), bits=6, include=["transformer.h.0.mlp.*"])
    container.write(compressed, tmp_path / "m.dzip")
    decoded = container.read(tmp_path / "m.dzip")
    entries = [(name, record.dtype, tuple(record.shape)) for name, record in decoded.tensors.items()]
    write_sharded(tmp_path / "out", entries, lambda name: decoded.tensors[name].to_dense(), decoded.files, shard_bytes=MB)
    assert json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"].keys() == set(
        decoded.tensors
    )
    loaded, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    reference = tiny_gpt2(transformers)
    missing, unexpected = reference.load_state_dict(decoded.state_dict(), strict=False)
    assert set(missing) <= {"lm_head.weight"} and unexpected == []  # the head is tied to wte
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids).logits, reference(ids).logits)
    # write_checkpoint's directory is the same writer with one shard.
    write_checkpoint(decoded, tmp_path / "single")
    assert sorted(os.listdir(tmp_path / "single")) == ["config.json", "generation_config.json", "model.safetensors"]
