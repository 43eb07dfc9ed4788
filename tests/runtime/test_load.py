"""Tests of deepzip.runtime.load: load_into sparse against dense (SparseLinear itself:
test_sparse_linear.py; SparseConv2d: test_sparse_conv.py).

The reference is the same file loaded with layout="dense".
"""

import pytest
import torch
from torch import nn

import deepzip
from deepzip.errors import ConfigError
from deepzip.runtime import load as runtime
from deepzip.runtime.load import SparseConv2d, SparseLinear, load_into


def assert_close(actual, expected):
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    error = (actual.double() - expected.double()).norm()
    assert error <= 1e-5 * expected.double().norm() + 1e-12


# --------------------------------------------------------------------------- load_into


def make_model() -> nn.Sequential:
    """Conv2d 3->4 k3 on 3x3x7 inputs (-> 20 features), Linear 20->30, ReLU, Linear 30->5."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def save_compressed(model, path, sparsity, bits):
    """Prune, quantize and save `model` (built under seed 0 by the caller) to `path`; return the path."""
    deepzip.prune_(model, sparsity=sparsity, min_size=0)
    deepzip.quantize_(model, bits=bits, min_size=0)
    deepzip.save(model, path)
    return path


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    return save_compressed(make_model(), tmp_path / "model.dzip", 0.7, 4)


def test_load_into_sparse_matches_dense(saved):
    dense = load_into(make_model(), saved, layout="dense")
    sparse = load_into(make_model(), saved, layout="sparse")
    assert isinstance(sparse[0], SparseConv2d) and list(sparse[0].parameters()) == []
    assert torch.equal(sparse[0].bias, dense[0].bias.detach())
    for index in (2, 4):
        layer = sparse[index]
        assert isinstance(layer, SparseLinear)
        assert "weight" not in dict(layer.named_parameters()) and list(layer.parameters()) == []
        assert torch.equal(layer.bias, dense[index].bias.detach())
    x = torch.randn(8, 3, 3, 7)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
        assert_close(sparse(x[:1]), dense(x[:1]))


def test_load_into_dense_equals_decoded_state_dict(saved):
    model = load_into(make_model(), saved)
    decoded = deepzip.load(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(value, decoded[key])


def test_unknown_layout_raises_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        load_into(make_model(), tmp_path / "does-not-exist.dzip", layout="csr")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model]


def test_model_lacking_keys_is_named_and_left_unchanged(saved):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 30))
    before, types = state(model)
    with pytest.raises(ConfigError, match=r"model has no keys 4\.bias, 4\.weight"):
        load_into(model, saved, layout="sparse")
    after, after_types = state(model)
    assert types == after_types and all(torch.equal(before[k], after[k]) for k in before)


def test_shape_mismatch_is_named_even_when_not_strict(saved):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(20, 31), nn.ReLU(), nn.Linear(30, 5))
    for strict in (True, False):
        with pytest.raises(ConfigError, match=r"2\.weight \(file \(30, 20\), model \(31, 20\)\)"):
            load_into(model, saved, layout="sparse", strict=strict)
    assert isinstance(model[2], nn.Linear)


def test_missing_keys_strict_and_not_strict(saved):
    def bigger():
        return nn.Sequential(*make_model(), nn.Linear(5, 2))

    with pytest.raises(ConfigError, match=r"file has no keys 5\.bias, 5\.weight"):
        load_into(bigger(), saved, layout="sparse")
    model = bigger()
    extra = model[5].weight.detach().clone()
    load_into(model, saved, layout="sparse", strict=False)
    assert isinstance(model[4], SparseLinear) and torch.equal(model[5].weight, extra)


def test_a_parametrized_model_takes_the_files_values(saved):
    # The file holds values under plain keys: a pruned model's mask gives way to them.
    model = make_model()
    deepzip.prune_(model, sparsity=0.5, min_size=0)
    load_into(model, saved)
    plain = load_into(make_model(), saved)
    assert not any(".parametrizations." in key for key in model.state_dict())
    mine, theirs = model.state_dict(), plain.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_layouts_constant():
    assert runtime.LAYOUTS == ("dense", "sparse")


class PlainSubclass(nn.Linear):
    """A Linear subclass that keeps nn.Linear.forward: SparseLinear computes it."""


class OwnForward(nn.Linear):
    """A Linear subclass with its own forward: it stays dense."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_linear_subclass_without_its_own_forward_becomes_sparse(saved):
    model = make_model()
    model[4] = PlainSubclass(30, 5)
    load_into(model, saved, layout="sparse")
    assert isinstance(model[2], SparseLinear) and isinstance(model[4], SparseLinear)
    dense = load_into(make_model(), saved)
    with torch.no_grad():
        x = torch.randn(4, 3, 3, 7)
        assert_close(model(x), dense(x))


def test_linear_subclass_with_its_own_forward_stays_dense(saved):
    def model_with_own_forward():
        model = make_model()
        model[4] = OwnForward(30, 5)
        return model

    model = load_into(model_with_own_forward(), saved, layout="sparse")
    assert isinstance(model[2], SparseLinear) and type(model[4]) is OwnForward
    dense = load_into(model_with_own_forward(), saved)
    with torch.no_grad():
        x = torch.randn(4, 3, 3, 7)
        assert_close(model(x), dense(x))


class PlainConv2d(nn.Conv2d):
    """A Conv2d subclass that keeps nn.Conv2d's forward: SparseConv2d computes it."""


class OwnConvForward(nn.Conv2d):
    """A Conv2d subclass with its own _conv_forward: it stays dense."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, 2 * weight, bias)


def test_layer_kind():
    assert runtime.layer_kind(nn.Linear(3, 4)) == runtime.LINEAR
    assert runtime.layer_kind(PlainSubclass(3, 4)) == runtime.LINEAR
    assert runtime.layer_kind(OwnForward(3, 4)) is None
    assert runtime.layer_kind(nn.Conv1d(3, 4, 1)) is None
    assert runtime.layer_kind(nn.Conv2d(3, 4, 3, stride=2, padding=(1, 0))) == runtime.CONV2D
    assert runtime.layer_kind(nn.Conv2d(3, 4, 3, padding="same")) == runtime.CONV2D
    assert runtime.layer_kind(PlainConv2d(3, 4, 3)) == runtime.CONV2D
    for conv in (
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, groups=4),  # depthwise
        nn.Conv2d(3, 4, 3, dilation=2),
        nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(3, 4, 2, padding="same"),  # torch pads one side more
        OwnConvForward(3, 4, 3),
        nn.ConvTranspose2d(3, 4, 3),
        nn.Conv3d(3, 4, 3),
    ):
        assert runtime.layer_kind(conv) is None, conv

    class Conv1D(nn.Module):  # the name alone is not transformers' Conv1D
        def __init__(self):
            super().__init__()
            self.nf, self.weight = 4, nn.Parameter(torch.zeros(3, 4))

    assert runtime.layer_kind(Conv1D()) is None


class Attention(nn.Module):
    """nn.MultiheadAttention (whose forward reads out_proj.weight) and a Linear after it."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_out_proj_stays_dense(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "attention.dzip"
    deepzip.save(deepzip.compress_state_dict(Attention().state_dict(), sparsity=0.5, bits=4, min_size=0), path)
    assert deepzip.load(path).keys() >= {"attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"}
    sparse = load_into(Attention().eval(), path, layout="sparse")
    assert type(sparse.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert isinstance(sparse.fc, SparseLinear)
    dense = load_into(Attention().eval(), path)
    with torch.no_grad():
        x = torch.randn(2, 5, 32)
        assert_close(sparse(x), dense(x))


def test_float64_layers_stay_dense(saved):
    model = load_into(make_model().double(), saved, layout="sparse")
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules())
    with torch.no_grad():
        model(torch.randn(2, 3, 3, 7, dtype=torch.float64))


def test_a_parametrized_model_loads_sparse(saved):
    # deepzip's own parametrizations make a subclass of nn.Linear that keeps its forward.
    model = make_model()
    deepzip.prune_(model, sparsity=0.5, min_size=0)
    load_into(model, saved, layout="sparse")
    assert isinstance(model[2], SparseLinear) and isinstance(model[4], SparseLinear)
    dense = load_into(make_model(), saved)
    with torch.no_grad():
        x = torch.randn(4, 3, 3, 7)
        assert_close(model(x), dense(x))


# --------------------------------------------------------------------------- convolutions


def make_cnn() -> nn.Sequential:
    """Conv2d 3->8 (pad 1), ReLU, Conv2d 8->8 stride 2, depthwise Conv2d, on 3x8x8 inputs; Linear 72->10."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Flatten(),
        nn.Linear(72, 10),
    )


def test_conv_layers_load_as_sparse_conv2d(tmp_path):
    torch.manual_seed(0)
    path = save_compressed(make_cnn(), tmp_path / "cnn.dzip", 0.65, 6)
    dense, sparse = load_into(make_cnn(), path), load_into(make_cnn(), path, layout="sparse")
    assert isinstance(sparse[0], SparseConv2d) and isinstance(sparse[2], SparseConv2d)
    assert sparse[2].stride == (2, 2) and sparse[0].padding == (1, 1)
    assert type(sparse[3]) is nn.Conv2d and torch.equal(sparse[3].weight, dense[3].weight)  # depthwise: dense
    assert isinstance(sparse[5], SparseLinear)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert_close(sparse(x), dense(x))
        assert_close(sparse(x[:1]), dense(x[:1]))
        assert_close(sparse[:4](x[0]), dense[:4](x[0]))  # unbatched (C, H, W) convolutions


# --------------------------------------------------------------------------- transformers' Conv1D


def test_gpt2_conv1d_layers_load_sparse(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from a config
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    conv1d = [name for name, m in model.named_modules() if type(m) is Conv1D]
    assert len(conv1d) == 8
    path = tmp_path / "gpt2.dzip"
    deepzip.save(deepzip.compress_state_dict(model.state_dict(), sparsity=0.5, bits=4, min_size=0), path)

    def fresh():
        torch.manual_seed(1)  # other random weights: everything must come from the file
        return transformers.GPT2LMHeadModel(config).eval()

    dense, sparse = load_into(fresh(), path), load_into(fresh(), path, layout="sparse")
    modules = dict(sparse.named_modules())
    assert all(isinstance(modules[name], SparseLinear) for name in conv1d)
    assert not any(isinstance(m, Conv1D) for m in sparse.modules())
    # wte and lm_head are one tied weight: dense, and still one Parameter.
    assert type(sparse.lm_head) is nn.Linear and sparse.lm_head.weight is sparse.transformer.wte.weight
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dense(ids).logits
        assert_close(sparse(ids).logits, expected)
        assert not torch.allclose(fresh()(ids).logits, expected)  # the check can tell models apart
