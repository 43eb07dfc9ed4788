"""Input moments of Linear layers: equal to X^T X computed directly, padding left out, tied weights skipped."""

import torch
from torch import nn

from deepzip.budget.moments import input_moments, layer_inputs
from deepzip.budget.sensitivity import OutputDistortion


class Tagger(nn.Module):
    """Embedding -> Linear -> ReLU -> Linear, an output layer tied to the embedding, keyword inputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.first = nn.Linear(6, 5)
        self.second = nn.Linear(5, 6)
        self.out = nn.Linear(6, 11, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, input_ids, attention_mask):
        hidden = self.second(torch.relu(self.first(self.embed(input_ids))))
        return self.out(hidden)


def batches():
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, 11, (3, 4), generator=g) for _ in range(2)]
    masks = [torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]), torch.ones(3, 4, dtype=torch.long)]
    return [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, masks)]


def test_moments_equal_the_direct_sum_over_real_tokens():
    model = Tagger().eval()
    probe = OutputDistortion(model, batches())
    moments = input_moments(["first.weight", "second.weight", "embed.weight", "first.bias"], probe)
    assert set(moments) == {"first.weight", "second.weight"}
    expected_first = torch.zeros(6, 6, dtype=torch.float64)
    expected_second = torch.zeros(5, 5, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches():
            keep = batch["attention_mask"].bool()
            x = model.embed(batch["input_ids"])[keep].double()
            expected_first += x.T @ x
            y = torch.relu(model.first(model.embed(batch["input_ids"])))[keep].double()
            expected_second += y.T @ y
    assert torch.allclose(moments["first.weight"], expected_first, rtol=1e-6)
    assert torch.allclose(moments["second.weight"], expected_second, rtol=1e-6)


def test_a_weight_tied_to_another_module_has_no_moment():
    probe = OutputDistortion(Tagger().eval(), batches())
    assert "out.weight" not in layer_inputs(["out.weight", "embed.weight", "first.weight"], probe)
    assert set(layer_inputs(["out.weight", "embed.weight", "first.weight"], probe)) == {"first.weight"}


def test_hooks_are_removed():
    model = Tagger().eval()
    input_moments(["first.weight"], OutputDistortion(model, batches()))
    assert not model.first._forward_hooks


class PaddedConv(nn.Conv2d):
    """A Conv2d that pads its input itself (one pixel more at the bottom/right), as TF "same" does."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, [0, 1, 0, 1]))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = PaddedConv(3, 4, 2, stride=2, bias=False)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.pointwise = nn.Conv2d(4, 6, 1)
        self.reflect = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.reflect(self.pointwise(self.depthwise(self.stem(x))))


def direct_patch_moment(x, conv, groups):
    """sum over patches of x x^T, patch by patch with explicit slicing: [groups, n, n]."""
    x = nn.functional.pad(x, [conv.padding[1]] * 2 + [conv.padding[0]] * 2).double()
    kh, kw = conv.kernel_size
    per_group = x.shape[1] // groups
    n = per_group * kh * kw
    total = torch.zeros(groups, n, n, dtype=torch.float64)
    for b in range(x.shape[0]):
        for i in range(0, x.shape[2] - kh + 1, conv.stride[0]):
            for j in range(0, x.shape[3] - kw + 1, conv.stride[1]):
                patch = x[b, :, i : i + kh, j : j + kw].reshape(groups, n)
                total += patch[:, :, None] * patch[:, None, :]
    return total


def test_convolution_moments_are_those_of_the_patches_each_layer_multiplies():
    model = ConvNet().eval()
    images = [torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    probe = OutputDistortion(model, images)
    names = ["stem.weight", "depthwise.weight", "pointwise.weight", "reflect.weight"]
    assert set(layer_inputs(names, probe)) == {"stem.weight", "depthwise.weight", "pointwise.weight"}
    moments = input_moments(names, probe)
    direct = {"stem": 0, "depthwise": 0, "pointwise": 0}
    with torch.no_grad():
        for x in images:
            after_stem = model.stem(x)
            direct["stem"] += direct_patch_moment(nn.functional.pad(x, [0, 1, 0, 1]), model.stem, 1)[0]
            direct["depthwise"] += direct_patch_moment(after_stem, model.depthwise, 4)
            direct["pointwise"] += direct_patch_moment(model.depthwise(after_stem), model.pointwise, 1)[0]
    for name, expected in direct.items():
        assert torch.allclose(moments[f"{name}.weight"], expected, rtol=1e-5, atol=1e-5), name
    assert moments["depthwise.weight"].shape == (4, 9, 9)
    assert "_conv_forward" not in vars(model.stem)  # the capture is undone


def test_compensation_on_convolution_moments_lowers_the_real_output_error():
    from deepzip.train.gptq import compensated_levels, grid_of

    torch.manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    base = torch.randn(4, 2, 12, 12)
    images = [torch.nn.functional.interpolate(base, size=(12, 12)).repeat(1, 4, 1, 1) + 0.1 * torch.randn(4, 8, 12, 12)]
    probe = OutputDistortion(nn.Sequential(conv).eval(), images)
    moment = input_moments(["0.weight"], probe)["0.weight"]
    step = 0.05
    grid = grid_of(tuple(conv.weight.shape), step)
    compensated = compensated_levels(conv.weight.detach(), grid, moment).float() * step
    rounded = torch.round(conv.weight.detach() / step) * step
    with torch.no_grad():
        reference = conv(images[0])
        errors = [float((nn.functional.conv2d(images[0], w, padding=1) - reference).pow(2).sum()) for w in (compensated, rounded)]
    assert errors[0] < 0.5 * errors[1]
