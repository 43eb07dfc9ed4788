"""deepzip.train.uniform: levels round(x / step) decoded to their centroids; exact zeros stay zero."""

import numpy as np
import pytest

from deepzip.errors import ConfigError
from deepzip.train.uniform import grid_quantize, uniform_quantize


def test_levels_decode_to_the_mean_of_their_values():
    values = np.array([0.9, 1.1, 1.2, -2.1, -1.9, 0.3], dtype=np.float32)
    codebook, codes = uniform_quantize(values, 1.0)
    np.testing.assert_allclose(codebook, [-2.0, 0.3, (0.9 + 1.1 + 1.2) / 3], rtol=1e-6)
    np.testing.assert_array_equal(codes, [2, 2, 2, 0, 0, 1])
    assert np.all(np.diff(codebook) > 0)


def test_a_level_holding_exact_zeros_decodes_to_zero():
    # A pruned tensor: most of the zero level's values are exact zeros, a few are small;
    # its centroid would be small but not zero, which would un-prune every pruned weight.
    rng = np.random.default_rng(0)
    values = rng.standard_normal(10_000).astype(np.float32)
    values[rng.random(10_000) < 0.5] = 0.0
    codebook, codes = uniform_quantize(values, 0.5)
    decoded = codebook[codes]
    assert np.all(decoded[values == 0] == 0)
    assert np.all(np.diff(codebook) > 0)
    # Without exact zeros the zero level keeps its centroid.
    shifted = rng.uniform(0.01, 0.2, 1000).astype(np.float32)
    codebook, _ = uniform_quantize(shifted, 0.5)
    assert codebook[0] == pytest.approx(shifted.mean(), rel=1e-5)


def test_grid_points_and_bad_steps():
    codebook, codes = grid_quantize(np.array([-1, 0, 3, 3]), 0.25)
    np.testing.assert_array_equal(codebook[codes], [-0.25, 0.0, 0.75, 0.75])
    with pytest.raises(ConfigError, match="step"):
        uniform_quantize(np.ones(3, np.float32), 0.0)
