"""Sparse convolution vs dense: direct sparse conv and im2col + sparse GEMM against F.conv2d.

For conv layers of AlexNet and VGG-16 at the paper's kept fractions (Tables 3 and 4; 8-bit
codes), batch 1, it times side by side in one process, the calls interleaved round-robin
so that load from elsewhere on the machine hits every column alike: torch's dense
`F.conv2d`; deepzip's direct sparse convolution (`deepzip.runtime.sparse_conv`, Park et
al., ICLR 2017); `F.unfold` (im2col) followed by deepzip's codebook kernel
(`kernels.matmul`, one "batch" row per output pixel); and `F.unfold` followed by torch's
CSR matmul. Every sparse output is checked against the dense conv before timing. Hot
timings (conv weights are small; the activations dominate), medians over repeats, 1 and
2 threads. The machine (CPU model, last-level cache, AVX2/AVX-512) is printed first.

    python benchmarks/conv_speed.py [--repeats 21] [--quick]
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click
import numpy as np

# (name, out, in, kernel, input size, padding, kept fraction): the paper's Tables 3 and 4.
LAYERS = (
    ("alexnet conv2", 192, 64, 5, 27, 2, 0.38),
    ("alexnet conv3", 384, 256, 3, 13, 1, 0.35),
    ("alexnet conv4", 384, 384, 3, 13, 1, 0.37),
    ("alexnet conv5", 256, 384, 3, 13, 1, 0.37),
    ("vgg16 conv3_1", 256, 128, 3, 56, 1, 0.53),
    ("vgg16 conv4_1", 512, 256, 3, 28, 1, 0.32),
    ("vgg16 conv5_2", 512, 512, 3, 14, 1, 0.29),
)
QUICK_REPEATS = 5


def machine() -> str:
    """One line: CPU model and count, last-level cache size, and whether AVX2 / AVX-512F are there.

    (AMD family 25 is Zen 3 or Zen 4; a VM may report only "AMD EPYC" as the model name.)
    """
    model, family, flags, cpus = "unknown CPU", {}, set(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model, cpus = value.strip(), cpus + 1
            elif key in ("cpu family", "model"):
                family[key] = value.strip()
            elif key == "flags":
                flags = set(value.split())
    except OSError:
        pass
    llc = "LLC unknown"
    caches = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            caches.append((int((index / "level").read_text()), (index / "type").read_text().strip(), (index / "size").read_text().strip()))
        except (OSError, ValueError):
            continue
    if caches:
        level, kind, size = max(caches)
        if size.endswith("K") and size[:-1].isdigit() and int(size[:-1]) % 1024 == 0:
            size = f"{int(size[:-1]) // 1024} MiB"
        llc = f"L{level} {size} {kind.lower()}"
    isa = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx2", "avx512f"))
    if family:
        model += f" (family {family.get('cpu family', '?')}, model {family.get('model', '?')})"
    return f"{model} x{cpus}; {llc}; {isa}"


def medians_ms(fns: list, repeats: int) -> list[float]:
    """Median milliseconds of each fn(), after two warm-up calls each, the calls interleaved."""
    for fn in fns:
        fn(), fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            started = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - started)
    return [1000 * float(np.median(spent)) for spent in times]


def check(name: str, label: str, got, expected) -> None:
    """Raise if a sparse output differs from the dense conv's."""
    import torch

    error = float((got.double() - expected.double()).norm() / expected.double().norm())
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{name}: {label} differs from F.conv2d (relative error {error:.2e})")


def layer_calls(out_c: int, in_c: int, k: int, size: int, pad: int, kept: float) -> dict:
    """{column: fn() -> output as a (1, out, OH, OW) tensor} for one layer at `kept` (8-bit codes)."""
    import torch
    import torch.nn.functional as F

    from deepzip.runtime import kernels, sparse_conv
    from deepzip.train.post_training import compress_tensor

    weight = torch.randn(out_c, in_c, k, k) * (2.0 / (in_c * k * k)) ** 0.5
    record = compress_tensor(weight.reshape(out_c, -1), sparsity=1 - kept, bits=8)
    dense_weight = record.to_dense().reshape(out_c, in_c, k, k)
    packed = kernels.pack_linear(record.shape, record.codebook, record.positions, record.codes)
    packed_conv = sparse_conv.pack_conv(dense_weight)
    csr = dense_weight.reshape(out_c, -1).to_sparse_csr()
    x = torch.randn(1, in_c, size, size)
    x_np = x.numpy()
    oh = size + 2 * pad - k + 1

    def unfold_deepzip():
        cols = F.unfold(x, k, padding=pad)[0].T.contiguous().numpy()  # (pixels, in*k*k)
        return torch.from_numpy(kernels.matmul(packed, cols)).T.reshape(1, out_c, oh, oh)

    return {
        "dense conv": lambda: F.conv2d(x, dense_weight, padding=pad),
        "direct sparse": lambda: torch.from_numpy(sparse_conv.conv2d(packed_conv, x_np, padding=pad)),
        "unfold+deepzip": unfold_deepzip,
        "unfold+torch CSR": lambda: (csr @ F.unfold(x, k, padding=pad)[0]).reshape(1, out_c, oh, oh),
    }


@click.command()
@click.option("--repeats", default=21, show_default=True, help="Timed calls per measurement.")
@click.option("--quick", is_flag=True, help=f"{QUICK_REPEATS} repeats instead of --repeats.")
def main(repeats: int, quick: bool) -> None:
    """Print dense conv vs direct sparse conv vs im2col + sparse GEMM timings."""
    import numba
    import torch

    repeats = QUICK_REPEATS if quick else repeats
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    click.echo(f"machine: {machine()}")
    click.echo(f"torch {torch.__version__}, numba {numba.__version__}; batch 1, ms, median of {repeats}; T = threads")
    click.echo(
        f"{'layer':15} {'kept':>5} {'T':>2} {'dense conv':>11} {'direct sparse':>14} {'unfold+deepzip':>15} "
        f"{'unfold+torch CSR':>17} {'direct/dense':>13} {'unfold+dz/dense':>16}"
    )
    for name, out_c, in_c, k, size, pad, kept in LAYERS:
        calls = layer_calls(out_c, in_c, k, size, pad, kept)
        expected = calls["dense conv"]()
        for label, fn in calls.items():
            check(name, label, fn(), expected)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            t_dense, t_direct, t_unfold, t_csr = medians_ms(list(calls.values()), repeats)
            click.echo(
                f"{name:15} {kept:5.0%} {threads:2} {t_dense:11.3f} {t_direct:14.3f} {t_unfold:15.3f} "
                f"{t_csr:17.3f} {t_dense / t_direct:12.2f}x {t_dense / t_unfold:15.2f}x"
            )
    click.echo(f"numba threading layer: {numba.threading_layer()}")


if __name__ == "__main__":
    main()
