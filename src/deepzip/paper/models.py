"""The networks of the Deep Compression paper, in plain torch.

- LeNet-300-100 and (Caffe) LeNet-5 take N x 1 x 28 x 28 images in [0, 1] and return
  logits. Input normalization is done with Python constants inside ``forward`` rather than
  buffers, so the state dict holds only the weights and biases that the compression
  pipeline prunes, quantizes and encodes.
- AlexNet and VGG-16 have torchvision's layer layout and state-dict keys
  (``features.0.weight`` ... ``classifier.6.bias``), so checkpoints saved from torchvision
  models load unchanged; like torchvision's, they expect normalized 224 x 224 images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepzip.errors import ConfigError
from deepzip.train.parametrizations import mask_of

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardize [0, 1] MNIST pixels with the data set's mean and std."""
    return (x - MNIST_MEAN) / MNIST_STD


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 network with ReLUs (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x 1 x 28 x 28 images in [0, 1] to N x 10 logits."""
        x = _normalize(x).flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe's LeNet: conv20-pool-conv50-pool-fc500-relu-fc10 (431,080 parameters).

    Caffe's version, which the paper uses, has no nonlinearity after the convolutions; the
    only ReLU follows fc1. Kept as is so accuracy and layer sizes match the paper.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N x 1 x 28 x 28 images in [0, 1] to N x 10 logits."""
        x = F.max_pool2d(self.conv1(_normalize(x)), 2)  # 20 x 12 x 12
        x = F.max_pool2d(self.conv2(x), 2)  # 50 x 4 x 4
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class AlexNet(nn.Module):
    """torchvision's AlexNet (61.1 M parameters): 5 conv and 3 fc layers, same keys."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for N x 3 x H x W normalized images."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# VGG-16 ("configuration D"): conv widths, "M" for a 2x2 max-pool.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """torchvision's VGG-16 without batch norm (138.4 M parameters), same keys."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in _VGG16_LAYOUT:
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for N x 3 x H x W normalized images."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_MODELS = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5, "alexnet": AlexNet, "vgg16": VGG16}
MODEL_NAMES = tuple(_MODELS)
MNIST_MODELS = ("lenet-300-100", "lenet-5")  # the ones `deepzip reproduce` trains


def build(name: str) -> nn.Module:
    """Return a freshly initialized model (PyTorch default init) by name; see ``MODEL_NAMES``."""
    try:
        cls = _MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return cls()


# Which layer reads each layer's outputs: (layer, reader, ReLU between) in forward order.
# Between them stand only elementwise maps and per-channel pooling (ReLU, max-pool,
# flatten), so output unit j of the layer feeds the reader's input features j*g .. j*g+g-1
# alone (g = 16 where LeNet-5 flattens 50 x 4 x 4 maps, 25 for a 5 x 5 kernel) and nothing
# else; max-pooling a map of zeros gives zeros.
_READERS = {
    LeNet300100: (("fc1", "fc2", True), ("fc2", "fc3", True)),
    LeNet5: (("conv1", "conv2", False), ("conv2", "fc1", False), ("fc1", "fc2", True)),
}


@torch.no_grad()
def drop_dead_units_(model: nn.Module) -> tuple[int, int]:
    """Prune, in place, every connection of the LeNet units that are dead; return (weights, biases) zeroed.

    Han et al. (2015, "Pruning neurons"), whose pruning the paper uses: "neurons with zero
    input connections or zero output connections may be safely pruned", with every
    connection to or from them. Here a unit is dead when no kept weight reads its output
    (its incoming weights and its bias are then dead weight in the file), or when it has
    no kept input and its output is exactly zero (bias <= 0 under a ReLU, bias 0 without
    one), so the weights that read it multiply zeros. Either way the model computes, bit
    for bit and for any finite input, what it did; pruning a unit can kill the units
    feeding it, so this runs to a fixed point. After deep pruning LeNet-5's fc1 holds
    units that fc2 no longer reads: at the paper's 8% kept, 141 units with 1,912 weights.

    Pruned weights leave their parametrization's mask (so they are gone from the file);
    weights without one are zeroed. Models without a table here are left alone (0, 0).
    """
    weights = biases = 0
    pairs = _READERS.get(type(model), ())
    changed = bool(pairs)
    while changed:
        changed = False
        for layer_name, reader_name, relu in reversed(pairs):
            layer, reader = getattr(model, layer_name), getattr(model, reader_name)
            units = layer.bias.numel()
            read = (reader.weight != 0).reshape(reader.weight.shape[0], units, -1).any(dim=2).any(dim=0)
            fed = (layer.weight != 0).reshape(units, -1).any(dim=1)
            silent = ~fed & ((layer.bias <= 0) if relu else (layer.bias == 0))
            incoming = _prune_(layer, (~read).reshape(units, 1).expand(units, layer.weight[0].numel()))
            outgoing = _prune_(reader, silent.reshape(1, units, 1).expand(reader.weight.shape[0], units, reader.weight[0].numel() // units))
            dead_biases = int((~read & (layer.bias != 0)).sum())
            layer.bias.masked_fill_(~read, 0.0)
            weights, biases = weights + incoming + outgoing, biases + dead_biases
            changed |= bool(incoming or outgoing or dead_biases)
    return weights, biases


def _prune_(module: nn.Module, picked: torch.Tensor) -> int:
    """Prune the weights of `module` where `picked` (bool, any shape of as many elements) is set; return how many were kept."""
    weight = module.weight
    picked = picked.reshape(weight.shape)
    count = int(((weight != 0) & picked).sum())
    if count:
        mask = mask_of(module)  # a parametrized weight is computed from its mask: prune that
        if mask is None:
            weight.masked_fill_(picked, 0.0)
        else:
            mask.masked_fill_(picked.to(mask.device), False)
    return count
