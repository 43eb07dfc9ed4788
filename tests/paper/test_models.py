"""Tests for deepzip.models: exact sizes, state-dict layout and forward shapes."""

import pytest
import torch
import torch.nn.functional as F

from deepzip.errors import ConfigError
from deepzip import prune_, quantize_
from deepzip.train.parametrizations import mask_of
from deepzip.paper.models import MNIST_MODELS, MODEL_NAMES, LeNet5, LeNet300100, build, drop_dead_units_

EXPECTED = {
    "lenet-300-100": (
        266_610,
        ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"],
    ),
    "lenet-5": (
        431_080,
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
         "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
    ),
}


def test_model_names():
    assert MODEL_NAMES == ("lenet-300-100", "lenet-5", "alexnet", "vgg16")
    assert MNIST_MODELS == ("lenet-300-100", "lenet-5")
    assert isinstance(build("lenet-300-100"), LeNet300100)
    assert isinstance(build("lenet-5"), LeNet5)


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_parameter_count(name):
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED[name][0]


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_state_dict_holds_only_weights_and_biases(name):
    model = build(name)
    assert list(model.state_dict()) == EXPECTED[name][1]
    # Normalization must be constants, not buffers, so compression sees only real weights.
    assert list(model.buffers()) == []


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_forward_shape(name):
    torch.manual_seed(0)
    model = build(name).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_lenet300100_matches_reference_forward():
    # Pins the architecture: normalization inside, ReLU after fc1 and fc2, none after fc3.
    torch.manual_seed(1)
    model = build("lenet-300-100")
    x = torch.rand(4, 1, 28, 28)
    h = ((x - 0.1307) / 0.3081).reshape(4, 784)
    h = torch.relu(h @ model.fc1.weight.T + model.fc1.bias)
    h = torch.relu(h @ model.fc2.weight.T + model.fc2.bias)
    ref = h @ model.fc3.weight.T + model.fc3.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.detach())


def test_lenet5_matches_caffe_reference_forward():
    # Caffe's LeNet: no ReLU after the convolutions, one ReLU after fc1.
    torch.manual_seed(2)
    model = build("lenet-5")
    x = torch.rand(4, 1, 28, 28)
    h = (x - 0.1307) / 0.3081
    h = F.max_pool2d(F.conv2d(h, model.conv1.weight, model.conv1.bias), 2)
    h = F.max_pool2d(F.conv2d(h, model.conv2.weight, model.conv2.bias), 2)
    h = torch.relu(h.reshape(4, 800) @ model.fc1.weight.T + model.fc1.bias)
    ref = h @ model.fc2.weight.T + model.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.detach())


@pytest.mark.parametrize("bad", ["lenet", "LeNet-5", "", None])
def test_unknown_name(bad):
    with pytest.raises(ConfigError, match="lenet-300-100"):
        build(bad)


# torchvision's key lists and parameter counts (torchvision.models.alexnet / vgg16), written
# out here because torchvision cannot be imported beside this torch.
ALEXNET_KEYS = [f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")] + [
    f"classifier.{i}.{p}" for i in (1, 4, 6) for p in ("weight", "bias")
]
VGG16_KEYS = [f"features.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) for p in ("weight", "bias")] + [
    f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")
]


@pytest.mark.parametrize(
    "name, keys, params, fc6",
    [("alexnet", ALEXNET_KEYS, 61_100_840, ("classifier.1.weight", (4096, 9216))),
     ("vgg16", VGG16_KEYS, 138_357_544, ("classifier.0.weight", (4096, 25088)))],
)  # fmt: skip
def test_imagenet_models_have_torchvision_keys(name, keys, params, fc6):
    model = build(name)
    state = model.state_dict()
    assert list(state) == keys
    assert sum(t.numel() for t in state.values()) == params
    assert tuple(state[fc6[0]].shape) == fc6[1]


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("name", MNIST_MODELS)
def test_dropping_dead_units_changes_no_output_bit(name, quantized):
    torch.manual_seed(0)
    model = build(name)
    with torch.no_grad():  # negative biases, so units without input are silent under a ReLU
        for module in model.children():
            module.bias.sub_(0.05)
    prune_(model, 0.9)  # deep magnitude pruning leaves dead units
    if quantized:
        quantize_(model, 4)
    images = torch.rand(16, 1, 28, 28)
    before = model(images)
    weights = {n: (m.weight != 0).clone() for n, m in model.named_children()}
    dropped, zeroed = drop_dead_units_(model)
    assert torch.equal(model(images), before)
    assert dropped == sum(int((weights[n] & (m.weight == 0)).sum()) for n, m in model.named_children()) > 0
    assert zeroed > 0
    assert all(torch.equal(mask_of(m), m.weight != 0) for m in model.children())  # gone from the masks, so from the file
    assert drop_dead_units_(model) == (0, 0)  # a fixed point
    last = list(model.children())[-1]
    assert (last.bias != 0).all()  # the logits' biases are always read


def _units(module, dead):
    """Which output units of `module` have any nonzero weight (dead: those with none)."""
    alive = (module.weight != 0).reshape(module.weight.shape[0], -1).any(dim=1)
    return set(torch.nonzero(~alive if dead else alive).flatten().tolist())


def test_dead_units_are_the_unread_and_the_silent_ones_to_a_fixed_point():
    torch.manual_seed(0)
    model = LeNet5()
    with torch.no_grad():
        model.conv2.weight[:, 5] = 0  # nothing reads conv1's channel 5: its weights and bias go
        model.fc2.weight[:, 7] = 0  # nor fc1's unit 7, the only reader of conv2's channel 3 ...
        model.fc1.weight[:, 16 * 3 : 16 * 4] = 0
        model.fc1.weight[7, 16 * 3 : 16 * 4] = 1.0  # ... so that channel dies with it
        model.fc1.weight[9] = 0  # fc1's unit 9 has no input and a negative bias: ReLU gives 0,
        model.fc1.bias[9] = -1.0  # so fc2's weights that read it go, then its bias
        model.conv2.weight[11] = 0  # conv2's channel 11 has no input but a bias: it is read
        model.conv2.bias[11] = 0.5
        model.conv1.weight[2] = 0  # conv1's channel 2 has no input and no bias: silent
        model.conv1.bias[2] = 0.0
    images = torch.rand(8, 1, 28, 28)
    before = model(images)
    drop_dead_units_(model)
    assert torch.equal(model(images), before)
    assert _units(model.conv1, dead=True) == {2, 5}
    assert _units(model.conv2, dead=True) == {3, 11}
    assert _units(model.fc1, dead=True) == {7, 9}
    assert (model.conv2.weight[:, 2] == 0).all() and (model.conv2.weight[[0, 1, 4]][:, [0, 1, 3]] != 0).all()
    assert (model.fc1.weight[:5, 16 * 11 : 16 * 12] != 0).all()  # channel 11's constant map is still read
    assert (model.fc2.weight[:, 9] == 0).all()
    expected_zero_bias = {"conv1": {2, 5}, "conv2": {3}, "fc1": {7, 9}, "fc2": set()}
    for name, module in model.named_children():
        assert set(torch.nonzero(module.bias == 0).flatten().tolist()) == expected_zero_bias[name]


def test_models_without_a_reader_table_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.zero_()
    assert drop_dead_units_(model) == (0, 0)
    assert (model[0].weight != 0).all()
