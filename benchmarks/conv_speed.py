"""Why deepzip loads convolutions dense: sparse GEMM over unfolded input vs dense conv.

For conv layers of AlexNet and VGG-16 at the paper's kept fractions (8-bit codes), batch 1,
it times side by side in one process: torch's dense `F.conv2d`; `F.unfold` (im2col) followed
by deepzip's codebook kernel (`kernels.matmul`, one "batch" row per output pixel); and
`F.unfold` followed by torch's CSR matmul. Hot timings (conv weights are small; the
activations dominate), medians over repeats, 1 and 2 threads.

    python benchmarks/conv_speed.py [--repeats 21]
"""

from __future__ import annotations

import time
import warnings

import click
import numpy as np

# (name, out, in, kernel, input size, padding, kept fraction): the paper's Tables 3 and 4.
LAYERS = (
    ("alexnet conv2", 192, 64, 5, 27, 2, 0.38),
    ("vgg16 conv3_1", 256, 128, 3, 56, 1, 0.53),
    ("vgg16 conv4_1", 512, 256, 3, 28, 1, 0.32),
    ("vgg16 conv5_2", 512, 512, 3, 14, 1, 0.29),
)


def median_ms(fn, repeats: int) -> float:
    """Median milliseconds of fn() after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


@click.command()
@click.option("--repeats", default=21, show_default=True)
def main(repeats: int) -> None:
    """Print dense conv vs im2col + sparse GEMM timings."""
    import numba
    import torch
    import torch.nn.functional as F

    from deepzip.runtime import kernels
    from deepzip.train.post_training import compress_tensor

    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    click.echo(f"{'layer':15} {'kept':>5} {'T':>2} {'dense conv':>11} {'unfold+deepzip':>15} {'unfold+torch CSR':>17} {'deepzip/dense':>14}")
    for name, out_c, in_c, k, size, pad, kept in LAYERS:
        weight = torch.randn(out_c, in_c, k, k) * (2.0 / (in_c * k * k)) ** 0.5
        record = compress_tensor(weight.reshape(out_c, -1), sparsity=1 - kept, bits=8)
        dense_weight = record.to_dense().reshape(out_c, in_c, k, k)
        packed = kernels.pack_linear(record.shape, record.codebook, record.positions, record.codes)
        csr = dense_weight.reshape(out_c, -1).to_sparse_csr()
        x = torch.randn(1, in_c, size, size)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numba.set_num_threads(threads)

            def sparse_deepzip():
                cols = F.unfold(x, k, padding=pad)[0].T.contiguous().numpy()  # (pixels, in*k*k)
                return kernels.matmul(packed, cols)

            dense = median_ms(lambda: F.conv2d(x, dense_weight, padding=pad), repeats)
            ours = median_ms(sparse_deepzip, repeats)
            theirs = median_ms(lambda: csr @ F.unfold(x, k, padding=pad)[0], repeats)
            click.echo(f"{name:15} {kept:5.0%} {threads:2} {dense:11.3f} {ours:15.3f} {theirs:17.3f} {dense / ours:13.2f}x")
        expected = F.conv2d(x, dense_weight, padding=pad).reshape(out_c, -1)
        got = torch.from_numpy(sparse_deepzip()).T
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), name


if __name__ == "__main__":
    main()
