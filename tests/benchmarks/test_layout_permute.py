"""benchmarks/layout_permute.py: the register-permute layout holds exactly the layer's weights, and its kernel computes W x."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fc_speed import dense_reference
from layout_permute import ROWS, WIDTH, compile_kernel, permute_layout, permute_matvec


def small_layer(out=37, n_in=150, kept=0.2, seed=0):
    """Random positions (a row left empty) and 5-bit codes; 150 columns = two full blocks and a partial one."""
    rng = np.random.default_rng(seed)
    keep = rng.random((out, n_in)) < kept
    keep[5] = False
    positions = np.flatnonzero(keep)
    return (out, n_in), positions, rng.integers(0, 32, len(positions)), rng.standard_normal(32).astype(np.float32)


def read_back(entries, depth, shape):
    """(row, column, code) of every non-padding entry, walking the layout as the kernel does."""
    out, n_in = shape
    blocks = -(-n_in // WIDTH)
    found, at = [], 0
    for cell, steps in enumerate(depth.tolist()):
        s, b = divmod(cell, blocks)
        for pair in range(steps // 2):
            for lane in range(ROWS):
                for half in range(2):
                    entry = int(entries[at + pair * 2 * ROWS + lane * 2 + half])
                    if entry & 63 != WIDTH:
                        found.append((s * ROWS + lane, b * WIDTH + (entry & 63), entry >> 6))
        at += steps * ROWS
    assert at == len(entries)
    return sorted(found)


def test_the_layout_holds_every_weight_once_and_only_padding_besides():
    shape, positions, codes, _ = small_layer()
    entries, depth, slices, blocks = permute_layout(shape, positions, codes)
    assert (slices, blocks) == (3, 3) and len(depth) == slices * blocks
    assert np.all(depth % 2 == 0)
    rows, cols = np.divmod(positions, shape[1])
    assert read_back(entries, depth, shape) == sorted(zip(rows.tolist(), cols.tolist(), codes.tolist()))
    assert int(np.sum(entries & 63 != WIDTH)) == len(positions)


@pytest.mark.skipif(shutil.which("gcc") is None or "avx512f" not in Path("/proc/cpuinfo").read_text(), reason="needs gcc and AVX-512F")
def test_the_kernel_equals_a_float64_dense_product(tmp_path):
    shape, positions, codes, codebook = small_layer()
    layout = permute_layout(shape, positions, codes)
    x = np.random.default_rng(3).standard_normal(shape[1]).astype(np.float32)
    y = np.full(layout[2] * ROWS, np.nan, np.float32)
    permute_matvec(compile_kernel(tmp_path), layout, codebook, x, y)
    reference, scale = dense_reference(shape, codebook, positions, codes, x)
    assert np.all(np.abs(y[: shape[0]] - reference) <= 1e-5 * scale + 1e-30)
    assert y[5] == 0.0  # the empty row
