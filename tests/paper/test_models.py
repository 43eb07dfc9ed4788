"""Tests for deepzip.models: exact sizes, state-dict layout and forward shapes."""

import pytest
import torch
import torch.nn.functional as F

from deepzip.errors import ConfigError
from deepzip.paper.models import MNIST_MODELS, MODEL_NAMES, LeNet5, LeNet300100, build

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
