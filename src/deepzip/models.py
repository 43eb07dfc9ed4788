"""The two MNIST networks of the Deep Compression paper: LeNet-300-100 and (Caffe) LeNet-5.

Both take N x 1 x 28 x 28 images in [0, 1] and return logits. Input normalization is done
with Python constants inside ``forward`` rather than buffers, so the state dict holds only the
weights and biases that the compression pipeline prunes, quantizes and encodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepzip.errors import ConfigError

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


_MODELS = {"lenet-300-100": LeNet300100, "lenet-5": LeNet5}
MODEL_NAMES = tuple(_MODELS)


def build(name: str) -> nn.Module:
    """Return a freshly initialized model (PyTorch default init) by name; see ``MODEL_NAMES``."""
    try:
        cls = _MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None
    return cls()
