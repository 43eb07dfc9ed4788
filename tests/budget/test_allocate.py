"""deepzip.budget.allocate against brute force, and its curves against direct quantization."""

import itertools

import numpy as np
import pytest
import torch

from deepzip.budget.allocate import Curve, choose, histogram, tensor_curve
from deepzip.errors import ConfigError
from deepzip.train.post_training import quantize_uniform


def random_curve(rng, points=6):
    """A convex, decreasing rate-distortion curve, like a quantizer's."""
    nbytes = np.sort(rng.uniform(10, 1000, points))
    sse = np.sort(rng.uniform(0.01, 10, points))[::-1] ** 2
    return Curve(np.arange(points, dtype=float), nbytes, sse, np.ones(points, dtype=int))


def test_choice_is_within_budget_and_optimal_among_hull_points():
    rng = np.random.default_rng(0)
    for trial in range(30):
        curves = {f"t{i}": random_curve(rng) for i in range(3)}
        weights = {n: float(rng.uniform(0.1, 10)) for n in curves}
        budget = float(rng.uniform(500, 2500))
        if sum(c.nbytes.min() for c in curves.values()) > budget:
            continue
        choice = choose(curves, weights, budget)
        spent = sum(curves[n].nbytes[i] for n, i in choice.items())
        assert spent <= budget
        got = sum(weights[n] * curves[n].sse[i] for n, i in choice.items())
        # Brute force over every combination: the Lagrangian choice is optimal on the convex
        # hull, so it can lose to brute force only by a point off the hull; bound the loss.
        best = min(
            sum(weights[n] * curves[n].sse[i] for n, i in zip(curves, combo))
            for combo in itertools.product(range(6), repeat=3)
            if sum(curves[n].nbytes[i] for n, i in zip(curves, combo)) <= budget
        )
        assert got >= best - 1e-12
        assert got <= 4 * best + 1e-9  # hull gaps only; typically equal


def test_a_budget_below_the_smallest_points_is_refused():
    rng = np.random.default_rng(1)
    curves = {"a": random_curve(rng)}
    with pytest.raises(ConfigError, match="need at least"):
        choose(curves, {"a": 1.0}, float(curves["a"].nbytes.min()) - 1)


def test_insensitive_tensor_gets_its_smallest_point():
    rng = np.random.default_rng(2)
    curves = {"a": random_curve(rng), "b": random_curve(rng)}
    choice = choose(curves, {"a": 0.0, "b": 1.0}, 1e9)
    assert choice["a"] == int(np.argmin(curves["a"].nbytes))
    assert choice["b"] == int(np.argmin(curves["b"].sse))


def test_curve_matches_direct_quantization():
    """The histogram's squared error and entropy agree with quantizing the weights themselves."""
    weight = torch.randn(256, 300, generator=torch.Generator().manual_seed(0)) * 0.05
    curve = tensor_curve(weight)
    for i in (10, 20, 30):
        record = quantize_uniform(weight, float(curve.steps[i]))
        sse = float((record.to_dense() - weight).double().pow(2).sum())
        counts = np.bincount(record.codes)
        p = counts[counts > 0] / counts.sum()
        entropy_bytes = float(-(counts[counts > 0] * np.log2(p)).sum()) / 8
        assert curve.sse[i] == pytest.approx(sse, rel=0.02)
        assert curve.nbytes[i] - curve.levels[i] * 6 - 32 == pytest.approx(entropy_bytes, rel=0.01, abs=2)
        assert curve.levels[i] == len(record.codebook)


def test_histogram_keeps_every_value_and_the_mean():
    weight = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    x, n = histogram(weight)
    assert n.sum() == 10_000
    assert float(np.sum(x * n)) == pytest.approx(float(weight.double().sum()), abs=1e-6)
