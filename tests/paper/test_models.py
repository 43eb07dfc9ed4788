"""Tests for deepzip.models: exact sizes, state-dict layout and forward shapes."""

import pytest
import torch
import torch.nn.functional as F

from deepzip.errors import ConfigError
from deepzip.paper.models import MNIST_MODELS, MODEL_NAMES, LeNet5, LeNet300100, build, zero_unread_biases_

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


@pytest.mark.parametrize("name", MNIST_MODELS)
def test_zeroing_unread_biases_changes_no_output_bit(name):
    torch.manual_seed(0)
    model = build(name)
    with torch.no_grad():  # a random 90% of the weights pruned, as a deep pruning leaves them
        for module in model.modules():
            if hasattr(module, "weight"):
                module.weight.mul_(torch.rand_like(module.weight) < 0.1)
    images = torch.rand(16, 1, 28, 28)
    before = model(images)
    biases = {n: m.bias.clone() for n, m in model.named_children()}
    zeroed = zero_unread_biases_(model)
    assert torch.equal(model(images), before)
    changed = sum(int((m.bias != biases[n]).sum()) for n, m in model.named_children())
    assert zeroed == changed > 0
    last = list(model.children())[-1]
    assert torch.equal(last.bias, biases[list(biases)[-1]])  # the logits' biases are always read


def test_only_the_biases_of_unread_units_are_zeroed():
    model = LeNet5()
    with torch.no_grad():
        model.fc1.weight[:, 16 * 3 : 16 * 4] = 0  # nothing reads conv2's channel 3 (its 4 x 4 map)
        model.fc2.weight[:, 7] = 0  # nor fc1's unit 7
        model.conv2.weight[:, 5] = 0  # nor conv1's channel 5
    expected = {"conv1": {5}, "conv2": {3}, "fc1": {7}, "fc2": set()}
    biases = {n: m.bias.clone() for n, m in model.named_children()}
    assert zero_unread_biases_(model) == 3
    for name, module in model.named_children():
        zero = set(torch.nonzero(module.bias == 0).flatten().tolist())
        assert zero == expected[name]
        kept = [i for i in range(module.bias.numel()) if i not in expected[name]]
        assert torch.equal(module.bias[kept], biases[name][kept])
