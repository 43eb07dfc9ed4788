"""Every weight-bearing layer type through the whole pipeline: prune_, train, quantize_, train,
save, load_into a fresh model, and outputs equal to the in-memory quantized model's."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepzip
from deepzip import container
from deepzip.compressed import CodebookTensor

transformers = pytest.importorskip("transformers")


def gpt2():
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


class LSTMLanguageModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 24)
        self.lstm = nn.LSTM(24, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, 50)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


class AttentionModel(nn.Module):
    def __init__(self, kdim=None):
        super().__init__()
        self.embed = nn.Embedding(40, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True, kdim=kdim, vdim=kdim)
        self.keys = nn.Linear(32, kdim or 32)
        self.head = nn.Linear(32, 40)

    def forward(self, tokens):
        x = self.embed(tokens)
        k = self.keys(x)
        return self.head(self.attn(x, k, k, need_weights=False)[0])


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 5, padding=2, groups=16)  # 400 weights
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, groups=4)
        self.up = nn.ConvTranspose2d(32, 8, 2, stride=2)
        self.head = nn.Linear(8 * 20 * 20, 10)

    def forward(self, x):
        x = F.relu(self.pointwise(F.relu(self.depthwise(F.relu(self.stem(x))))))
        return self.head(self.up(F.relu(self.grouped(x))).flatten(1))


class WeightNormModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.utils.parametrizations.weight_norm(nn.Linear(20, 64))
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Zoo(nn.Module):
    """The remaining registered types: Conv1d/3d, ConvTranspose1d, EmbeddingBag, GRU, RNN, projected LSTM."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 16, mode="mean")
        self.conv1d = nn.Conv1d(16, 16, 3, padding=1)
        self.deconv1d = nn.ConvTranspose1d(16, 16, 2, stride=2)
        self.gru = nn.GRU(16, 16, bidirectional=True, batch_first=True)
        self.rnn = nn.RNN(32, 16, batch_first=True)
        self.lstm = nn.LSTM(16, 32, proj_size=16, batch_first=True)
        self.conv3d = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Linear(16 + 4, 5)

    def forward(self, x):
        tokens, volume = x
        bags = self.bag(tokens.reshape(-1, 3)).reshape(tokens.shape[0], -1, 16)  # (B, 4, 16)
        seq = self.deconv1d(torch.relu(self.conv1d(bags.transpose(1, 2)))).transpose(1, 2)  # (B, 8, 16)
        seq = self.lstm(self.rnn(self.gru(seq)[0])[0])[0]
        pooled = self.conv3d(volume).mean((2, 3, 4))
        return self.head(torch.cat([seq[:, -1], pooled], 1))


def tokens(vocab, shape=(4, 12)):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(1))


CASES = {
    "gpt2": (gpt2, lambda: tokens(97), lambda out: out.logits),
    "lstm": (LSTMLanguageModel, lambda: tokens(50), lambda out: out),
    "attention": (AttentionModel, lambda: tokens(40), lambda out: out),
    "attention-kdim": (lambda: AttentionModel(kdim=24), lambda: tokens(40), lambda out: out),
    "depthwise": (DepthwiseSeparable, lambda: torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1)), lambda out: out),
    "zoo": (Zoo, lambda: (tokens(30), torch.randn(4, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2))), lambda out: out),
    "weight_norm": (WeightNormModel, lambda: torch.randn(8, 20, generator=torch.Generator().manual_seed(1)), lambda out: out),
}


def build(case):
    torch.manual_seed(0)
    return CASES[case][0]()


def train_steps(model, x, out, steps=3):
    """A few SGD steps on a stand-in loss; parameters built before the step, as a user does."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        loss = out(model(x)).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_round_trip_is_exact(case, tmp_path):
    _, make_input, out = CASES[case]
    model, x = build(case), make_input()
    pruned = deepzip.prune_(model, 0.5)
    train_steps(model, x, out)
    quantized = deepzip.quantize_(model, 5)
    train_steps(model, x, out)
    assert set(pruned) == set(quantized) and len(pruned) > 0
    path = tmp_path / "model.dzip"
    deepzip.save(model, path)

    fresh = deepzip.load_into(build(case), path)
    with torch.no_grad():
        assert torch.equal(out(fresh(x)), out(model(x)))

    # The summary names every parameter of the model, compressed or with its reason.
    named = {row_name for row in quantized.rows for row_name in row.name.split(" = ")}
    keys = set(deepzip.load(path))
    assert keys <= named | {k for k in keys if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # Every compressed target is a codebook record in the file.
    records = container.read(path).tensors
    for row in quantized.compressed:
        assert isinstance(records[row.name.split(" = ")[0]], CodebookTensor), row.name


def test_gpt2_conv1d_tied_lm_head_and_summary(tmp_path):
    model, x = gpt2(), tokens(97)
    summary = deepzip.prune_(model, 0.5)
    conv1d = [n for n, m in model.named_modules() if type(m).__name__.startswith("ParametrizedConv1D")]
    assert len(conv1d) == 8  # c_attn, c_proj, c_fc, mlp.c_proj in each of two blocks
    assert "transformer.wte" in summary and "lm_head" not in summary  # one target for the tie
    train_steps(model, x, lambda o: o.logits)
    deepzip.quantize_(model, 5)
    wte = model.transformer.wte.parametrizations.weight[-1]
    assert model.lm_head.parametrizations.weight[-1] is wte  # one mask, one codebook
    train_steps(model, x, lambda o: o.logits)
    path = tmp_path / "gpt2.dzip"
    deepzip.save(model, path)

    records = container.read(path).tensors
    for name in conv1d:
        assert isinstance(records[f"{name}.weight"], CodebookTensor)
    assert records["lm_head.weight"] is records["transformer.wte.weight"]  # stored once: an alias
    fresh = gpt2()
    fresh.lm_head.weight = nn.Parameter(fresh.lm_head.weight.detach().clone())  # untie it
    deepzip.load_into(fresh, path)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # tied again
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, model(x).logits)

    text = str(summary)
    for key in ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.ln_1.weight", "transformer.wpe.weight"):
        assert key in text
    assert "1-D" in text


def test_every_registered_type_of_the_zoo_is_a_target():
    summary = deepzip.prune_(Zoo(), 0.5, min_size=0)
    expected = {"bag", "conv1d", "deconv1d", "conv3d", "head", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "lstm.weight_hr_l0"}
    expected |= {f"gru.weight_{kind}_l0{suffix}" for kind in ("ih", "hh") for suffix in ("", "_reverse")}
    expected |= {f"lstm.weight_{kind}_l0" for kind in ("ih", "hh")}
    assert set(summary) == expected


def test_lstm_and_attention_tensors_are_targets():
    summary = deepzip.prune_(LSTMLanguageModel(), 0.5)
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1"} <= set(summary)
    summary = deepzip.prune_(AttentionModel(), {"attn": 0.5})  # a module name reaches its tensors
    assert set(summary) == {"attn.in_proj_weight"}
    summary = deepzip.prune_(AttentionModel(kdim=24), {"attn*": 0.5})
    assert set(summary) == {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj"}


def test_unsupported_and_small_tensors_are_listed_with_reasons():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(64, 64))
            self.fc = nn.Linear(64, 64)
            self.tiny = nn.Linear(8, 8)
            self.norm = nn.LayerNorm(64)
            self.register_buffer("steps", torch.zeros(3))

    summary = deepzip.prune_(Custom(), 0.5)
    reasons = {row.name: row.detail for row in summary.raw}
    assert set(summary) == {"fc"}
    assert reasons["table"].startswith("unsupported layer type (Custom.table)")
    assert reasons["tiny.weight"] == "too small (64 < 256 entries)"
    assert reasons["norm.weight"] == "1-D" and reasons["fc.bias"] == "1-D" and reasons["steps"] == "buffer"
