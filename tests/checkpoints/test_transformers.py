"""A tiny transformers BERT through compress -> .dzip -> decompress -> from_pretrained, offline."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers imports huggingface_hub: never download
transformers = pytest.importorskip("transformers")

import torch
from torch.nn.functional import cosine_similarity

import deepzip
from deepzip import container
from deepzip.checkpoints import (
    compress_checkpoint,
    group_tied,
    read_checkpoint,
    write_checkpoint,
)

torch.set_num_threads(1)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "a"]


def tiny_config():
    # Every weight matrix has >= 1024 elements, so all of them are compressed.
    return transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, max_position_embeddings=64
    )


def input_ids():
    return torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A seeded tiny BertModel saved with its tokenizer; returns (directory, model)."""
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_config()).eval()
    model.save_pretrained(root / "model")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "model")
    return root / "model", model


def round_trip(directory, out, **settings):
    """compress -> .dzip -> read -> decompress to `out`; returns the .dzip path."""
    compressed = compress_checkpoint(read_checkpoint(directory), **settings)
    dzip = out.with_suffix(".dzip")
    container.write(compressed, dzip)
    write_checkpoint(container.read(dzip), out)
    return dzip


def test_8_bit_bert_loads_cleanly_and_matches_its_decoded_weights(bert, tmp_path):
    directory, original = bert
    checkpoint = read_checkpoint(directory)
    assert checkpoint.kind == "transformers"
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(checkpoint.files)
    dzip = round_trip(directory, tmp_path / "out", sparsity=0.0, bits=8)

    loaded, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert type(loaded) is transformers.BertModel
    assert {k: v for k, v in info.items() if v} == {}  # no missing, unexpected or mismatched keys
    loaded.eval()
    # The reference: a fresh BertModel with the weights deepzip itself decodes.
    reference = transformers.BertModel(loaded.config).eval()
    reference.load_state_dict(deepzip.load(dzip), strict=True)
    with torch.no_grad():
        hidden = loaded(input_ids()).last_hidden_state
        assert torch.equal(hidden, reference(input_ids()).last_hidden_state)
        before = original(input_ids()).last_hidden_state
    similarity = cosine_similarity(hidden, before, dim=-1)  # per token
    print(f"8-bit, sparsity 0: worst-token cosine similarity to the original {similarity.min():.5f}")
    assert similarity.min() >= 0.999

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer("hello the world")["input_ids"] == [2, 5, 7, 6, 3]


def test_pruned_6_bit_bert_still_loads_and_runs(bert, tmp_path):
    directory, original = bert
    dzip = round_trip(directory, tmp_path / "out", sparsity=0.5, bits=6)
    assert dzip.stat().st_size < 0.5 * sum(4 * p.numel() for p in original.parameters())
    loaded, info = transformers.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    with torch.no_grad():
        hidden = loaded.eval()(input_ids()).last_hidden_state
    assert hidden.shape == (2, 16, 32) and torch.isfinite(hidden).all()
    weight = loaded.encoder.layer[0].intermediate.dense.weight
    assert (weight == 0).float().mean() == 0.5


def test_tied_embeddings_from_pytorch_model_bin(tmp_path):
    # An older transformers layout: torch.save of the state dict, where the output layer
    # and the word embeddings share memory.
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(tiny_config()).eval()
    directory = tmp_path / "mlm"
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    checkpoint = read_checkpoint(directory)
    assert group_tied(checkpoint.state_dict)["cls.predictions.decoder.weight"] == "bert.embeddings.word_embeddings.weight"

    compressed = compress_checkpoint(checkpoint, bits=8)
    assert compressed.tensors["cls.predictions.decoder.weight"] is compressed.tensors["bert.embeddings.word_embeddings.weight"]
    container.write(compressed, tmp_path / "mlm.dzip")
    write_checkpoint(container.read(tmp_path / "mlm.dzip"), tmp_path / "out")

    loaded, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight  # re-tied
    reference = transformers.BertForMaskedLM(loaded.config).eval()
    reference.load_state_dict(deepzip.load(tmp_path / "mlm.dzip"), strict=True)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids()).logits, reference(input_ids()).logits)


def test_sharded_save_pretrained_is_merged(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_config())
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    checkpoint = read_checkpoint(tmp_path / "sharded")
    assert set(checkpoint.files) == {"config.json"}
    expected = model.state_dict()
    assert set(checkpoint.state_dict) == set(expected)
    assert all(torch.equal(checkpoint.state_dict[k], expected[k]) for k in expected)
