"""Sensitivity scans against metrics whose values are computed by hand, and the recipe they give.

The metrics are chosen so that the expected table follows from the definitions alone:
minus the squared distance to the original weights (pruning removes exactly the smallest
magnitudes), and weights drawn from a few distinct values (k-means on them is exact).
"""

import math

import pytest
import torch
from torch import nn

import deepzip
from deepzip.errors import ConfigError
from deepzip.train.recipe import LayerRule, Recipe, parse_recipe
from deepzip.train.sensitivity import (
    SensitivityTable,
    prune_sensitivity,
    quantize_sensitivity,
    recipe_from_sensitivity,
    recipe_yaml,
)

SPARSITIES = (0.0, 0.25, 0.5, 0.9, 1.0)


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def snapshot(model: nn.Module) -> dict[str, bytes]:
    """Exact bytes of every state-dict entry (torch.equal would let -0.0 pass for 0.0)."""
    return {k: v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k, v in model.state_dict().items()}


def distance_metric(reference: dict[str, torch.Tensor]):
    """evaluate(model) = -sum over layers of ||W - W0||^2, in float64."""

    def evaluate(model):
        return -sum(float(((model[i].weight.detach().double() - reference[i]) ** 2).sum()) for i in (0, 2))

    return evaluate


def expected_prune_loss(weight: torch.Tensor, sparsity: float) -> float:
    """Sum of squares of the n - round((1 - s) n) smallest-magnitude weights (pure Python)."""
    squares = sorted(float(w) ** 2 for w in weight.double().flatten())
    pruned = len(squares) - round((1 - sparsity) * len(squares))
    return sum(squares[:pruned])


# ---------------------------------------------------------------- prune_sensitivity


def test_prune_scan_matches_hand_computed_losses():
    model = make_model()
    weights = {i: model[i].weight.detach().double().clone() for i in (0, 2)}
    table = prune_sensitivity(model, distance_metric(weights), SPARSITIES, min_size=0)
    assert table.kind == "sparsity"
    assert table.baseline == 0.0
    assert list(table.curves) == ["0", "2"]
    for name, i in (("0", 0), ("2", 2)):
        assert [s for s, _ in table.curves[name]] == list(SPARSITIES)
        for sparsity, metric in table.curves[name]:
            assert metric == pytest.approx(-expected_prune_loss(weights[i], sparsity), rel=1e-12, abs=1e-15)


def test_scans_leave_the_model_bit_identical():
    model = make_model()
    before = snapshot(model)
    prune_sensitivity(model, distance_metric({i: model[i].weight.detach().double().clone() for i in (0, 2)}), SPARSITIES, min_size=0)
    quantize_sensitivity(model, lambda m: 0.0, bits=(1, 2, 4), min_size=0)
    assert snapshot(model) == before


@pytest.mark.parametrize("stage", ["pruned", "quantized"])
def test_scans_of_compressed_models_restore_masks_and_codes(stage):
    model = make_model()
    deepzip.prune_(model, sparsity=0.5, min_size=0)
    if stage == "quantized":
        deepzip.quantize_(model, bits=2, min_size=0)
    keys, before = list(model.state_dict()), snapshot(model)
    zeros = lambda m: float(sum(int((m[i].weight == 0).sum()) for i in (0, 2)))  # noqa: E731
    table = prune_sensitivity(model, zeros, (0.25, 0.5, 0.8), min_size=0)
    assert list(model.state_dict()) == keys
    assert snapshot(model) == before
    # Below or at the layer's current sparsity the mask stays; above it, more weights go.
    baseline = table.baseline
    assert baseline == 15 + 7  # 30 - round(0.5 * 30) and 15 - round(0.5 * 15) zeros
    curve = dict(table.curves["0"])
    assert curve[0.25] == curve[0.5] == baseline
    assert curve[0.8] == baseline + (30 - round(0.2 * 30)) - 15
    if stage == "pruned":
        quantize_sensitivity(model, zeros, bits=(1, 3), min_size=0)
        assert snapshot(model) == before


def test_model_is_restored_when_evaluate_raises():
    model = make_model()
    before = snapshot(model)
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("evaluation failed")
        return 0.0

    with pytest.raises(RuntimeError, match="evaluation failed"):
        prune_sensitivity(model, evaluate, SPARSITIES, min_size=0)
    assert snapshot(model) == before
    calls.clear()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        quantize_sensitivity(model, evaluate, (1, 2), min_size=0)
    assert snapshot(model) == before


def test_layers_and_progress():
    model = make_model()
    lines = []
    table = prune_sensitivity(model, lambda m: 1.0, (0.5, 0.9), layers=["2"], progress=lines.append, min_size=0)
    assert list(table.curves) == ["2"]
    assert len(lines) == 1 + 1 * 2  # baseline, then one line per evaluation
    assert lines[0].startswith("baseline") and lines[1].startswith("2 sparsity 0.5")


# ---------------------------------------------------------------- quantize_sensitivity


def few_valued_model() -> nn.Sequential:
    """Layer 0 holds 10 each of 0, 1 and 3; layer 2 holds 4 each of -2, -1, 1, 2 (minus 3 zeros)."""
    model = make_model()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 1.0, 3.0]).repeat(10).view(5, 6))
        model[2].weight.copy_(torch.tensor([-2.0, -1.0, 1.0, 2.0] * 3 + [0.0] * 3).view(3, 5))
    return model


@pytest.mark.parametrize("pruned", [False, True])
def test_quantize_scan_matches_hand_computed_losses(pruned):
    model = few_valued_model()
    if pruned:  # the same zeros, as masks: the scan must keep them out of the clusters
        deepzip.prune_(model, sparsity={"0": 10 / 30, "2": 3 / 15}, min_size=0)
    weights = {i: model[i].weight.detach().double().clone() for i in (0, 2)}
    before = snapshot(model)
    table = quantize_sensitivity(model, distance_metric(weights), bits=(1, 2, 3), min_size=0)
    assert snapshot(model) == before
    assert table.kind == "bits" and table.baseline == 0.0
    # Layer 0: survivors {1, 3} fit 2 centroids exactly (clustering the zeros would not).
    assert table.curves["0"] == ((1, 0.0), (2, 0.0), (3, 0.0))
    # Layer 2, 1 bit: linear init at -2 and 2, Lloyd settles at -1.5 and 1.5: every one of
    # the 12 survivors is 0.5 off. 2 bits and more are exact.
    assert table.curves["2"] == ((1, -12 * 0.25), (2, 0.0), (3, 0.0))


def test_quantize_scan_rejects_quantized_layers():
    model = make_model()
    deepzip.quantize_(model, bits=2, layers=["2"], min_size=0)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_sensitivity(model, lambda m: 0.0, (2,), min_size=0)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m: prune_sensitivity(m, lambda _: 0.0, (), min_size=0), "grid is empty"),
        (lambda m: prune_sensitivity(m, lambda _: 0.0, (0.5, 1.5), min_size=0), "sparsity must be in"),
        (lambda m: prune_sensitivity(m, lambda _: 0.0, (-0.1,), min_size=0), "sparsity must be in"),
        (lambda m: prune_sensitivity(m, lambda _: 0.0, (float("nan"),), min_size=0), "sparsity must be in"),
        (lambda m: prune_sensitivity(m, lambda _: 0.0, ("0.5",), min_size=0), "must be numbers"),
        (lambda m: prune_sensitivity(m, lambda _: 0.0, layers=["fc*"], min_size=0), "matches no tensor"),
        (lambda m: prune_sensitivity(m, lambda _: "good", (0.5,), min_size=0), "must return a number"),
        (lambda m: quantize_sensitivity(m, lambda _: 0.0, (), min_size=0), "grid is empty"),
        (lambda m: quantize_sensitivity(m, lambda _: 0.0, (0,), min_size=0), "bits must be an integer"),
        (lambda m: quantize_sensitivity(m, lambda _: 0.0, (13,), min_size=0), "bits must be an integer"),
        (lambda m: quantize_sensitivity(m, lambda _: 0.0, (2.5,), min_size=0), "bits must be an integer"),
        (lambda m: quantize_sensitivity(m, lambda _: 0.0, layers=["nope"], min_size=0), "matches no tensor"),
    ],
)
def test_bad_scan_inputs_are_config_errors(call, words):
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=words):
        call(model)
    assert snapshot(model) == before


# ---------------------------------------------------------------- tables


def hand_tables() -> tuple[SensitivityTable, SensitivityTable]:
    prune = SensitivityTable(
        "sparsity",
        0.90,
        {
            "fc1": [(0.0, 0.90), (0.5, 0.90), (0.8, 0.895), (0.9, 0.85), (0.95, 0.5)],
            "conv1": [(0.25, 0.80), (0.5, 0.70)],  # even the smallest sparsity costs too much
            "fc2": [(0.5, 0.899), (0.8, 0.70), (0.9, 0.90)],  # recovers after a failure: ignored
            "fc3": [(0.5, 0.90), (0.9, float("nan"))],  # a diverged evaluation is a failure
        },
    )
    bits = SensitivityTable(
        "bits",
        0.90,
        {
            "fc1": [(2, 0.50), (3, 0.88), (4, 0.895), (8, 0.90)],
            "conv1": [(4, 0.20), (6, 0.60)],  # even the largest width fails
            "fc2": [(2, 0.899), (3, 0.5), (5, 0.9)],
        },
    )
    return prune, bits


def test_recipe_picks_the_most_compression_within_tolerance():
    prune, bits = hand_tables()
    recipe = recipe_from_sensitivity(prune, 0.01, bits)
    assert recipe == Recipe(
        {
            "fc1": LayerRule(sparsity=0.8, bits=4),
            "conv1": LayerRule(sparsity=0.0, bits=6),
            "fc2": LayerRule(sparsity=0.5, bits=5),
            "fc3": LayerRule(sparsity=0.5, bits=None),
        }
    )
    # A tolerance equal to a loss accepts it, also where 0.90 - 0.85 rounds above 0.05.
    assert recipe_from_sensitivity(prune, 0.05).rules["fc1"].sparsity == 0.9
    assert recipe_from_sensitivity(prune, 0.0).rules["fc1"].sparsity == 0.5


def test_default_bits_fill_layers_without_a_bits_curve():
    prune, bits = hand_tables()
    assert {r.bits for r in recipe_from_sensitivity(prune, 0.01, default_bits=5).rules.values()} == {5}
    assert recipe_from_sensitivity(prune, 0.01, bits, default_bits=7).rules["fc3"].bits == 7


def test_recipe_yaml_parses_back_to_the_same_recipe():
    prune, bits = hand_tables()
    recipe = recipe_from_sensitivity(prune, 0.01, bits)
    text = recipe_yaml(recipe, comment="from a scan\nsecond line")
    assert text.startswith("# from a scan\n# second line\n")
    assert parse_recipe(text) == recipe
    # nn.Sequential names look like numbers to YAML; they must come back as strings.
    model = make_model()
    scan = prune_sensitivity(model, lambda m: 0.0, (0.5, 0.9), min_size=0)
    recipe = recipe_from_sensitivity(scan, 0.0, default_bits=4)
    parsed = parse_recipe(recipe_yaml(recipe))
    assert parsed == recipe == Recipe({"0": LayerRule(sparsity=0.9, bits=4), "2": LayerRule(sparsity=0.9, bits=4)})
    # ... and the recipe drives prune_ on the model it came from.
    kept = deepzip.prune_(model, sparsity=parsed.setting("sparsity"), min_size=0)
    assert kept == {"0": pytest.approx(round(0.1 * 30) / 30), "2": pytest.approx(round((1 - 0.9) * 15) / 15)}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tolerance": -0.01}, "tolerance must be a number >= 0"),
        ({"tolerance": float("nan")}, "tolerance must be a number >= 0"),
        ({"tolerance": float("inf")}, "tolerance must be finite"),
        ({"tolerance": "0.1"}, "tolerance must be a number >= 0"),
        ({"tolerance": 0.1, "default_bits": 0}, "bits must be an integer"),
    ],
)
def test_bad_recipe_inputs_are_config_errors(kwargs, words):
    prune, _ = hand_tables()
    with pytest.raises(ConfigError, match=words):
        recipe_from_sensitivity(prune, **kwargs)


def test_tables_of_the_wrong_kind_are_config_errors():
    prune, bits = hand_tables()
    with pytest.raises(ConfigError, match="must be a sparsity scan"):
        recipe_from_sensitivity(bits, 0.1)
    with pytest.raises(ConfigError, match="must be a bits scan"):
        recipe_from_sensitivity(prune, 0.1, prune)
    with pytest.raises(ConfigError, match="no layers"):
        recipe_from_sensitivity(SensitivityTable("sparsity", 1.0, {}), 0.1)


def test_table_json_round_trip_and_markdown():
    prune, bits = hand_tables()
    for table in (bits, SensitivityTable("sparsity", 0.9, {"fc1": [(0.0, 0.9), (0.5, 0.85)]})):
        assert SensitivityTable.from_json(table.to_json()) == table
    assert isinstance(SensitivityTable.from_json(bits.to_json()).curves["fc1"][0][0], int)
    markdown = bits.to_markdown()
    lines = markdown.splitlines()
    assert lines[0] == "Baseline metric (nothing changed): 0.9"
    assert lines[2] == "| layer \\ bits | 2 | 3 | 4 | 5 | 6 | 8 |"
    assert "| `conv1` |  |  | 0.2 |  | 0.6 |  |" in lines
    assert math.isnan(dict(SensitivityTable.from_json(prune.to_json()).curves["fc3"])[0.9])


@pytest.mark.parametrize(
    "text, words",
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"kind": "size", "baseline": 1, "layers": {}}', "kind must be one of"),
        ('{"kind": "bits", "baseline": "high", "layers": {}}', "metric must be a number"),
        ('{"kind": "bits", "baseline": 1, "layers": []}', "'layers' must map"),
        ('{"kind": "bits", "baseline": 1, "layers": {"a": [[2]]}}', "pairs"),
        ('{"kind": "bits", "baseline": 1, "layers": {"a": [[4, 1], [2, 1]]}}', "distinct and ascending"),
        ('{"kind": "sparsity", "baseline": 1, "layers": {"a": [[2, 1]]}}', "sparsity must be in"),
    ],
)
def test_bad_table_json_is_a_config_error(text, words):
    with pytest.raises(ConfigError, match=words):
        SensitivityTable.from_json(text)
