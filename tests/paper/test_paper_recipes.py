"""The shipped AlexNet recipe on a random AlexNet: kept fractions within 0.5 points of the recipe."""

import torch

from deepzip import container as fileformat
from deepzip.paper import models
from deepzip.train.post_training import compress_state_dict
from deepzip.train.recipe import load_recipe


def test_alexnet_recipe_on_a_random_alexnet():
    torch.manual_seed(0)
    recipe = load_recipe("alexnet")
    state = models.build("alexnet").state_dict()
    compressed = compress_state_dict(state, recipe.setting("sparsity"), recipe.setting("bits"))
    decoded = fileformat.from_bytes(fileformat.to_bytes(compressed)).state_dict()
    for layer, sparsity in recipe.setting("sparsity").items():
        weight = decoded[f"{layer}.weight"]
        kept = float((weight != 0).sum()) / weight.numel()
        # Decoded zeros: a centroid can round to exactly 0 only by accident, so allow 0.5 points.
        assert abs(kept - (1 - sparsity)) <= 0.005, layer
        assert len(torch.unique(weight)) <= 2 ** recipe.setting("bits")[layer] + 1
    for name in ("features.0.bias", "classifier.6.bias"):
        assert torch.equal(decoded[name], state[name])
