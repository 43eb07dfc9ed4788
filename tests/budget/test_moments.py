"""Input moments of Linear layers: equal to X^T X computed directly, padding left out, tied weights skipped."""

import torch
from torch import nn

from deepzip.budget.moments import input_moments, linear_inputs
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
    assert "out.weight" not in linear_inputs(["out.weight", "embed.weight", "first.weight"], probe)
    assert set(linear_inputs(["out.weight", "embed.weight", "first.weight"], probe)) == {"first.weight"}


def test_hooks_are_removed():
    model = Tagger().eval()
    input_moments(["first.weight"], OutputDistortion(model, batches()))
    assert not model.first._forward_hooks
