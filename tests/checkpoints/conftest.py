"""Fixtures of the checkpoint tests: a tiny seeded BERT directory with its tokenizer and a text."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers imports huggingface_hub: never download

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "a", "cat", "sat", "on", "mat"]
TEXT = ["hello world", "the cat sat on the mat", "a cat", "the world", "hello the cat on a mat"] * 4


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """A seeded tiny BertModel with its tokenizer, and a calibration text file."""
    transformers = pytest.importorskip("transformers")
    import torch

    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    transformers.BertModel(config).eval().save_pretrained(root / "model")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "model")
    (root / "text.txt").write_text("\n".join(TEXT) + "\n")
    return root / "model", root / "text.txt"
