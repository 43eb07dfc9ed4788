"""Random pruned, weight-shared matrices and their dense float64 form, for the runtime tests."""

import numpy as np


def random_layer(shape, density, k=32, seed=0, rows=None):
    """(codebook, positions, codes) of a random pruned, weight-shared matrix.

    `rows` restricts the kept weights to those rows (the others stay empty).
    """
    rng = np.random.default_rng(seed)
    out, n_in = shape
    allowed = np.arange(out * n_in).reshape(out, n_in)
    if rows is not None:
        allowed = allowed[rows]
    allowed = allowed.ravel()
    nnz = round(density * allowed.size)
    positions = np.sort(rng.choice(allowed, size=nnz, replace=False)).astype(np.int64)
    codes = rng.integers(0, k, size=nnz).astype(np.uint16)
    codebook = rng.standard_normal(k).astype(np.float32)
    return codebook, positions, codes


def dense_reference(shape, codebook, positions, codes) -> np.ndarray:
    weight = np.zeros(int(np.prod(shape)), dtype=np.float64)
    weight[positions] = codebook.astype(np.float64)[codes]
    return weight.reshape(shape)


def packed_layer(params):
    """(shape, codebook, positions, codes, PackedLinear) of `random_layer(**params)`, where
    `params` holds the shape beside random_layer's other arguments."""
    from deepzip.runtime.packing import pack_linear

    params = dict(params)
    shape = params.pop("shape")
    codebook, positions, codes = random_layer(shape, **params)
    return shape, codebook, positions, codes, pack_linear(shape, codebook, positions, codes)
