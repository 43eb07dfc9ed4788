"""Tests of deepzip.runtime.permute: the register-permute batch-1 layout, read back against
the positions it was built from, and its kernel against a float64 dense reference."""

import numpy as np
import pytest
from random_weights import dense_reference, packed_layer, random_layer
from test_kernels import assert_matches

from deepzip.runtime import kernels, permute

CASES = {
    "one partial block, partial slice": {"shape": (37, 50), "density": 0.3},
    "two full blocks and a partial one": {"shape": (37, 150), "density": 0.2},
    "exactly one block and one slice": {"shape": (16, 63), "density": 0.5},
    "one column past a block": {"shape": (17, 64), "density": 0.5},
    "empty rows": {"shape": (64, 300), "density": 0.3, "rows": [r for r in range(64) if r not in (0, 5, 6, 63)]},
    "k = 4": {"shape": (30, 500), "density": 0.2, "k": 4},
    "fully dense": {"shape": (33, 700), "density": 1.0},
    "an fc layer's shape": {"shape": (1000, 4096), "density": 0.09},
    "one row": {"shape": (1, 200), "density": 0.5},
}


def case(name):
    return packed_layer(CASES[name])


def read_back(layout):
    """(row, column, code) of every non-padding entry, walking the layout as the kernel does."""
    found = []
    for s in range(layout.slices):
        at = int(layout.slice_starts[s])
        for b in range(layout.blocks):
            steps = int(layout.depth[s * layout.blocks + b])
            for pair in range(steps // 2):
                for lane in range(permute.ROWS):
                    for half in range(2):
                        entry = int(layout.entries[at + pair * 2 * permute.ROWS + lane * 2 + half])
                        if entry & 63 != permute.WIDTH:
                            found.append((s * permute.ROWS + lane, b * permute.WIDTH + (entry & 63), entry >> 6))
            at += steps * permute.ROWS
    return sorted(found)


@pytest.mark.parametrize("name", CASES)
def test_the_layout_holds_every_weight_once_and_only_padding_besides(name):
    shape, _, positions, codes, packed = case(name)
    layout = permute.build_permute(packed)
    rows, cols = np.divmod(positions, shape[1])
    assert read_back(layout) == sorted(zip(rows.tolist(), cols.tolist(), codes.tolist()))
    assert np.all(layout.depth % 2 == 0)
    assert layout.entries.size == int(layout.depth.sum()) * permute.ROWS
    assert layout.padding == pytest.approx(1 - positions.size / layout.entries.size)


needs_avx512 = pytest.mark.skipif(not permute.host_supports(), reason="the kernel needs AVX-512F")


@needs_avx512
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("with_bias", (False, True))
def test_the_kernel_matches_a_float64_dense_product(name, with_bias):
    shape, codebook, positions, codes, packed = case(name)
    layout = permute.build_permute(packed)
    x = np.random.default_rng(1).standard_normal(shape[1]).astype(np.float32)
    bias = np.random.default_rng(2).standard_normal(shape[0]).astype(np.float32) if with_bias else np.zeros(0, np.float32)
    y = np.full(shape[0], np.nan, np.float32)
    permute.permute_matvec(layout, x, bias, y)
    assert_matches(y[None], x[None], dense_reference(shape, codebook, positions, codes), bias if with_bias else None)
    if name == "empty rows":
        assert np.all(y[[0, 5, 6, 63]] == (bias[[0, 5, 6, 63]] if with_bias else 0.0))


@needs_avx512
@pytest.mark.parametrize("threads", (1, 2))
def test_threads_give_the_same_bits(threads):
    *_, packed = case("an fc layer's shape")
    layout = permute.build_permute(packed)
    x = np.random.default_rng(3).standard_normal(packed.shape[1]).astype(np.float32)
    kernels.use_threads(1)
    one = np.empty(packed.shape[0], np.float32)
    permute.permute_matvec(layout, x, np.zeros(0, np.float32), one)
    kernels.use_threads(threads)
    y = np.empty_like(one)
    permute.permute_matvec(layout, x, np.zeros(0, np.float32), y)
    np.testing.assert_array_equal(y, one)  # each slice is one thread's, summed in one order


def test_when_matmul_builds_it(monkeypatch):
    monkeypatch.setattr(permute, "_HOST", True)  # the choice only; nothing here runs the kernel
    *_, dense_enough = case("an fc layer's shape")
    assert permute.permute_layout(dense_enough) is not None
    assert permute.permute_layout(dense_enough) is permute.permute_layout(dense_enough)  # built once
    shape = (512, 4096)
    sparse = kernels.pack_linear(shape, *random_layer(shape, density=0.03))
    assert permute.permute_layout(sparse) is None  # padding past MAX_PADDING
    assert permute.build_permute(sparse).padding > permute.MAX_PADDING
    assert permute.build_permute(sparse, permute.MAX_PADDING) is None
    wide = kernels.pack_linear((20, 300), *random_layer((20, 300), density=0.5, k=64))
    assert permute.permute_layout(wide) is None
    with pytest.raises(ValueError, match="at most 32 centroids"):
        permute.build_permute(wide)
    empty = kernels.pack_linear((20, 300), np.ones(1, np.float32), np.zeros(0, np.int64), np.zeros(0, np.uint16))
    assert permute.permute_layout(empty) is None
    monkeypatch.setattr(permute, "_HOST", False)
    *_, other_host = case("an fc layer's shape")
    assert permute.permute_layout(other_host) is None


@needs_avx512
def test_matmul_runs_it_at_batch_one_and_reports_its_bytes(monkeypatch):
    monkeypatch.setattr(permute, "_HOST", True)
    shape, codebook, positions, codes, packed = case("an fc layer's shape")
    x = np.random.default_rng(4).standard_normal((1, shape[1])).astype(np.float32)
    y = kernels.matmul(packed, x)
    assert kernels.batch_one_layout(packed) is permute.permute_layout(packed)
    assert_matches(y, x, dense_reference(shape, codebook, positions, codes))
    assert kernels.bytes_per_call(packed)["weights"] == permute.permute_layout(packed).nbytes


def test_not_used_when_numba_compiles_for_another_cpu(monkeypatch):
    monkeypatch.setattr(permute.numba.config, "CPU_NAME", "generic")
    assert not permute.host_supports()
