"""Batch-1..64 speed of compressed fully connected layers: deepzip sparse vs dense vs torch CSR.

The six fc layers of the paper's speed table (Han et al. 2016, section 6.3) get random
weights with the paper's kept fractions and 5-bit codes; each is written to a real .dzip,
read back and run as a `deepzip.runtime.SparseLinear`. In the same process, at 1 and 2
threads, the same weights run as dense fp32 (`torch.nn.functional.linear` and numpy
`x @ W.T`; the baseline is the faster) and as torch sparse CSR with int32 indices.

Cold timings rotate through enough copies of each competitor's weights to overflow the
last-level cache several times, so every call reads its weights from DRAM, as a batch-1
product in a real network does; hot timings repeat a call at once on the same copy. The
competitors are timed in interleaved rounds (`time_rounds`), so drift in a shared
machine's speed reaches them all alike. Each time is also set against
its floor, bytes it must move / the read bandwidth measured here with the same threads.

    python benchmarks/fc_speed.py [--quick] [--layers alexnet-fc6,vgg16-fc7]
        [--batches 1,8,64] [--threads 1,2] [--json results.json]
"""

from __future__ import annotations

import copy
import ctypes
import glob
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import click
import numba
import numpy as np
import torch
import torch.nn.functional as F

from deepzip import container
from deepzip.compressed import CodebookTensor, CompressedModel, RawTensor
from deepzip.runtime import kernels, permute
from deepzip.runtime.load import SparseLinear

# name: (out, in, kept fraction), from the paper's Table (CPU speed, batch 1).
LAYERS = {
    "alexnet-fc6": (4096, 9216, 0.09),
    "alexnet-fc7": (4096, 4096, 0.09),
    "alexnet-fc8": (1000, 4096, 0.25),
    "vgg16-fc6": (4096, 25088, 0.04),
    "vgg16-fc7": (4096, 4096, 0.04),
    "vgg16-fc8": (1000, 4096, 0.23),
}
CODE_BITS = 5  # the paper's fc layers
MIB = 1 << 20
COMPETITORS = ("dense_torch", "dense_numpy", "torch_csr", "deepzip")


# --------------------------------------------------------------------------- environment


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache sysfs reports, or 32 MiB if it reports none."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = Path(path).read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes, default=32 * MIB)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vector_isa() -> str:
    """The vector instruction sets that matter to the kernels, from /proc/cpuinfo's flags
    (AVX-512 gathers are fast where AVX2's are slow, e.g. Zen 3)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                found = [name for name in ("avx512f", "avx2", "fma", "f16c") if name in flags]
                return " ".join(found) or "no avx2"
    except OSError:
        pass
    return "unknown"


class BlasThreads:
    """Sets OpenBLAS's thread count: threadpoolctl when installed, else numpy's bundled
    OpenBLAS through ctypes. Without either, numpy runs on its default threads (reported)."""

    def __init__(self):
        self.how = "uncontrolled"
        self._set = None
        try:
            from threadpoolctl import threadpool_limits

            self._set = lambda n: threadpool_limits(n, user_api="blas")
            self.how = "threadpoolctl"
            return
        except ImportError:
            pass
        libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
        for lib in libs:
            handle = ctypes.CDLL(lib)
            for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
                if hasattr(handle, symbol):
                    fn = getattr(handle, symbol)
                    fn.argtypes = [ctypes.c_int]
                    self._set = fn
                    self.how = f"ctypes {os.path.basename(lib)}:{symbol}"
                    return

    def set(self, n: int) -> None:
        if self._set is not None:
            self._set(n)


def set_threads(n: int, blas: BlasThreads) -> None:
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    blas.set(n)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _read_all(a):
    total = np.float32(0.0)
    for i in numba.prange(a.shape[0]):
        total += a[i]
    return total


def read_bandwidth(nbytes: int, repeats: int) -> tuple[float, float]:
    """(best, median) read bandwidth in bytes/s of a vectorized parallel sum over `nbytes`
    on numba's threads. The floors use the best: on a shared machine a slow repeat is
    another job's interference, not the memory system, and a floor must not be too high."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    _read_all(a)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _read_all(a)
        times.append(time.perf_counter() - t)
    return nbytes / min(times), nbytes / statistics.median(times)


def copy_bandwidth(nbytes: int, repeats: int) -> float:
    """numpy copy bandwidth, bytes read + written per second (one thread)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times)


# --------------------------------------------------------------------------- layers


def random_layer(out: int, n_in: int, kept: float, seed: int) -> CompressedModel:
    """A CompressedModel with one CodebookTensor 'fc.weight' (+ 'fc.bias'), like a pruned,
    5-bit quantized fc layer: uniform kept positions, uniform codes, normal centroids."""
    rng = np.random.default_rng(seed)
    chunks = []
    rows_per_chunk = max(1, (16 * MIB) // max(n_in, 1))
    for r0 in range(0, out, rows_per_chunk):
        r1 = min(out, r0 + rows_per_chunk)
        keep = rng.random((r1 - r0, n_in), dtype=np.float32) < kept
        chunks.append(np.flatnonzero(keep) + r0 * n_in)
    positions = np.concatenate(chunks).astype(np.int64)
    k = 1 << CODE_BITS
    codes = rng.integers(0, k, size=positions.size).astype(np.uint16)
    codebook = np.sort(rng.standard_normal(k) * (2.0 / n_in) ** 0.5).astype(np.float32)
    bias = torch.from_numpy((rng.standard_normal(out) * 0.01).astype(np.float32))
    weight = CodebookTensor((out, n_in), torch.float32, codebook, positions, codes)
    return CompressedModel({"fc.weight": weight, "fc.bias": RawTensor(bias)})


def copies_for(nbytes: int, cold_bytes: int) -> int:
    """How many copies of `nbytes` of weights fill `cold_bytes` (at least 2, so calls can rotate)."""
    return max(2, math.ceil(cold_bytes / max(nbytes, 1)))


BURST = 3  # cold calls timed per competitor in a round


def layer_with_reference(out: int, n_in: int, kept: float):
    """(codebook, positions, codes, x, reference, scale): `random_layer`'s weights (seed 0), an x, and W x with |W| |x| in float64.

    The layout benchmarks judge a kernel's y by max |y - reference| / scale.
    """
    weight = random_layer(out, n_in, kept, seed=0).tensors["fc.weight"]
    codebook, positions, codes = weight.codebook.astype(np.float32), weight.flat_positions(), weight.codes
    x = np.random.default_rng(1).standard_normal(n_in).astype(np.float32)
    return codebook, positions, codes, x, *dense_reference((out, n_in), codebook, positions, codes, x)


def dense_reference(shape, codebook, positions, codes, x):
    """(W x, |W| |x|) in float64, W the dense matrix of a codebook layer (flat `positions`, their `codes`)."""
    dense = np.zeros(shape[0] * shape[1])
    dense[positions] = codebook[codes]
    dense = dense.reshape(shape)
    x64 = x.astype(np.float64)
    return dense @ x64, np.abs(dense) @ np.abs(x64)


def time_rounds(calls: dict, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """{competitor: {"cold", "cold_min", "hot"} seconds}: medians over `repeats` interleaved rounds.

    `calls` is {competitor: (fn, args_list)}. In each round every competitor, in an order
    that rotates from round to round, makes one untimed call (bringing its code, x and y
    back into cache after the others ran), then BURST timed calls on its next copies of
    the weights (cold: the copies rotate, so their weights come from DRAM), then one timed
    call again on the last copy (hot: its weights now cached). The machine is shared and
    its speed drifts over seconds: timed one after another, each in its own stretch of
    time, the competitors put deepzip at 0.85x, 0.97x and 1.50x of torch CSR on VGG-16
    fc7 in three runs of one afternoon; rounds give them all the same conditions.
    """
    names = list(calls)
    position = {name: 0 for name in names}
    cold = {name: [] for name in names}
    hot = {name: [] for name in names}

    def timed(fn, args) -> float:
        t = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t

    for round_ in range(warmup + repeats):
        for k in range(len(names)):
            name = names[(round_ + k) % len(names)]
            fn, args_list = calls[name]
            visit = [args_list[(position[name] + i) % len(args_list)] for i in range(1 + BURST)]
            position[name] += 1 + BURST
            fn(*visit[0])
            burst = [timed(fn, args) for args in visit[1:]]
            again = timed(fn, visit[-1])
            if round_ >= warmup:
                cold[name] += burst
                hot[name].append(again)
    return {
        name: {"cold": statistics.median(cold[name]), "cold_min": min(cold[name]), "hot": statistics.median(hot[name])}
        for name in names
    }


def csr_int32(dense: torch.Tensor) -> torch.Tensor:
    csr = dense.to_sparse_csr()
    # int64 indices (what to_sparse_csr gives) make torch's kernel 2x slower (measured.md).
    return torch.sparse_csr_tensor(
        csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), csr.shape
    )


def csr_clone(csr: torch.Tensor) -> torch.Tensor:
    return torch.sparse_csr_tensor(
        csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone(), csr.shape
    )


def bench_layer(name, spec, batches, threads, cold_bytes, warmup, repeats, bandwidth, blas, workdir, log):
    out, n_in, kept = spec
    t0 = time.perf_counter()
    model = random_layer(out, n_in, kept, seed=zlib.crc32(name.encode()))
    path = Path(workdir) / f"{name}.dzip"
    file_bytes = container.write(model, path, overwrite=True)
    record = container.read(path).tensors
    sparse = SparseLinear(record["fc.weight"], record["fc.bias"].to_dense())
    weight = record["fc.weight"].to_dense()
    bias = record["fc.bias"].to_dense()
    packed = sparse.packed
    nnz = packed.nnz
    csr = csr_int32(weight)
    batch_one = batch_one_layout_name(packed)
    log(f"{name}: {out}x{n_in}, {100 * nnz / (out * n_in):.2f}% kept, .dzip {file_bytes / MIB:.2f} MiB, "
        f"batch-1 layout {batch_one}, setup {time.perf_counter() - t0:.1f} s")

    weight_bytes = {
        "dense": 4 * out * n_in + 4 * out,
        "torch_csr": 4 * (out + 1) + 8 * nnz + 4 * out,
        "deepzip": kernels.bytes_per_call(packed)["weights"] + 4 * out,
    }
    # Cold sets: the two dense competitors share the dense copies (torch views numpy's memory).
    dense_np = [weight.numpy()] + [weight.numpy().copy() for _ in range(copies_for(weight_bytes["dense"], cold_bytes) - 1)]
    dense_t = [torch.from_numpy(w) for w in dense_np]
    csrs = [csr] + [csr_clone(csr) for _ in range(copies_for(weight_bytes["torch_csr"], cold_bytes) - 1)]
    sparses = [sparse] + [copy.deepcopy(sparse) for _ in range(copies_for(weight_bytes["deepzip"], cold_bytes) - 1)]
    bias_np = bias.numpy()

    results = []
    for nthreads in threads:
        set_threads(nthreads, blas)
        for batch in batches:
            x = torch.randn(batch, n_in, generator=torch.Generator().manual_seed(batch))
            x_np = x.numpy()
            x_col = x[0] if batch == 1 else x.t()  # torch CSR is fastest as W @ x with 1-D x

            def run_dense_torch(w):
                return F.linear(x, w, bias)

            def run_dense_numpy(w):
                return x_np @ w.T + bias_np

            def run_csr(w):
                product = w @ x_col
                return (product if batch == 1 else product.t()) + bias

            def run_deepzip(layer):
                return layer(x)

            calls = {
                "dense_torch": (run_dense_torch, [(w,) for w in dense_t]),
                "dense_numpy": (run_dense_numpy, [(w,) for w in dense_np]),
                "torch_csr": (run_csr, [(w,) for w in csrs]),
                "deepzip": (run_deepzip, [(s,) for s in sparses]),
            }
            with torch.inference_mode():
                reference = run_dense_torch(dense_t[0]).double()
                for competitor, (fn, args) in calls.items():
                    y = torch.as_tensor(fn(*args[0])).double().reshape(batch, out)
                    error = float((y - reference).norm() / reference.norm())
                    if error > 1e-4:
                        raise RuntimeError(f"{name} batch {batch}: {competitor} differs from dense by {error:.1e}")
                row = {"layer": name, "batch": batch, "threads": nthreads}
                timed = time_rounds(calls, warmup, repeats)
                for competitor, (_, args) in calls.items():
                    cold, cold_min, hot = (timed[competitor][what] for what in ("cold", "cold_min", "hot"))
                    key = "dense" if competitor.startswith("dense") else competitor
                    moved = weight_bytes[key] + 4 * batch * (n_in + out)
                    floor = moved / bandwidth[nthreads]
                    row[competitor] = {
                        "cold_s": cold,
                        "cold_min_s": cold_min,
                        "hot_s": hot,
                        "bytes": moved,
                        "floor_s": floor,
                        "cold_pct_of_floor": 100 * floor / cold,
                        "copies": len(args),
                    }
            best_dense = min(row["dense_torch"]["cold_s"], row["dense_numpy"]["cold_s"])
            row["best_dense_cold_s"] = best_dense
            row["speedup_vs_dense"] = best_dense / row["deepzip"]["cold_s"]
            row["speedup_vs_csr"] = row["torch_csr"]["cold_s"] / row["deepzip"]["cold_s"]
            row["hot_speedup_vs_dense"] = min(row["dense_torch"]["hot_s"], row["dense_numpy"]["hot_s"]) / row["deepzip"]["hot_s"]
            results.append(row)
            log(format_row(row))
    layer_info = {
        "shape": [out, n_in],
        "kept": nnz / (out * n_in),
        "nnz": nnz,
        "file_bytes": file_bytes,
        "weight_bytes": weight_bytes,
        "bytes_ratio_csr_over_deepzip": weight_bytes["torch_csr"] / weight_bytes["deepzip"],
        "batch1_layout": batch_one,
    }
    return layer_info, results


def batch_one_layout_name(packed) -> str:
    """Which layout deepzip's batch-1 product runs on this layer, in words (built here if not yet)."""
    layout = kernels.batch_one_layout(packed)
    if layout is None:
        return "sliced"
    if isinstance(layout, permute.PermuteLinear):
        return f"register-permute (padding {layout.padding:.0%})"
    return "code-split"


# --------------------------------------------------------------------------- report


HEADER = (
    f"{'layer':<12} {'B':>3} {'T':>2} | {'torch':>8} {'numpy':>8} {'csr':>8} {'deepzip':>8} ms cold | "
    f"{'x dense':>7} {'x csr':>6} | {'dz %fl':>6} {'dn %fl':>6} | {'dz hot':>8} {'dense hot':>9}"
)


def format_row(row) -> str:
    ms = lambda s: f"{1e3 * s:8.3f}"  # noqa: E731
    dense_pct = max(row["dense_torch"]["cold_pct_of_floor"], row["dense_numpy"]["cold_pct_of_floor"])
    dense_hot = min(row["dense_torch"]["hot_s"], row["dense_numpy"]["hot_s"])
    return (
        f"{row['layer']:<12} {row['batch']:>3} {row['threads']:>2} | {ms(row['dense_torch']['cold_s'])} "
        f"{ms(row['dense_numpy']['cold_s'])} {ms(row['torch_csr']['cold_s'])} {ms(row['deepzip']['cold_s'])}         | "
        f"{row['speedup_vs_dense']:6.2f}x {row['speedup_vs_csr']:5.2f}x | "
        f"{row['deepzip']['cold_pct_of_floor']:5.0f}% {dense_pct:5.0f}% | {ms(row['deepzip']['hot_s'])} {ms(dense_hot)} "
    )


def summarize(rows, layers, batches, threads) -> dict:
    summary = {"geomean_speedup_vs_dense_batch1_cold": {}, "geomean_speedup_vs_csr_batch1_cold": {},
               "slowest_layer_batch1_cold": {}, "crossover_batch": {}}
    for t in threads:
        b1 = [r for r in rows if r["batch"] == 1 and r["threads"] == t]
        if b1:
            summary["geomean_speedup_vs_dense_batch1_cold"][t] = math.exp(statistics.mean(math.log(r["speedup_vs_dense"]) for r in b1))
            summary["geomean_speedup_vs_csr_batch1_cold"][t] = math.exp(statistics.mean(math.log(r["speedup_vs_csr"]) for r in b1))
            worst = min(b1, key=lambda r: r["speedup_vs_dense"])
            summary["slowest_layer_batch1_cold"][t] = {"layer": worst["layer"], "speedup_vs_dense": worst["speedup_vs_dense"]}
        for name in layers:
            mine = sorted((r for r in rows if r["layer"] == name and r["threads"] == t), key=lambda r: r["batch"])
            dense_wins = [r["batch"] for r in mine if r["speedup_vs_dense"] < 1]
            summary["crossover_batch"].setdefault(name, {})[t] = dense_wins[0] if dense_wins else f"> {max(batches)}"
    return summary


@click.command()
@click.option("--quick", is_flag=True, help="Smoke run: fewer repeats, smaller cold sets and bandwidth array.")
@click.option("--layers", default=",".join(LAYERS), show_default=True, help="Comma-separated layer names.")
@click.option("--batches", default="1,8,64", show_default=True)
@click.option("--threads", "thread_counts", default="1,2", show_default=True)
@click.option("--repeats", type=int, default=None, help="Interleaved rounds per measurement (default 31, quick 7).")
@click.option("--cold-mib", type=int, default=None,
              help="Weight bytes rotated per competitor for cold timings (default 4 x LLC, 128..1024 MiB; quick 128).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write all results here.")
def main(quick, layers, batches, thread_counts, repeats, cold_mib, json_path):
    """Time deepzip's sparse fc layers against dense and torch CSR; print a table."""
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    names = [n.strip() for n in layers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        raise click.UsageError(f"unknown layers {', '.join(unknown)}; choose from {', '.join(LAYERS)}")
    batch_list = [int(b) for b in batches.split(",")]
    threads = [int(t) for t in thread_counts.split(",")]
    if min(batch_list) < 1 or min(threads) < 1:
        raise click.UsageError("batches and threads must be >= 1")
    repeats = repeats or (7 if quick else 31)
    warmup = 2 if quick else 5
    llc = last_level_cache_bytes()
    cold_bytes = (cold_mib * MIB) if cold_mib else (128 * MIB if quick else min(1024 * MIB, max(128 * MIB, 4 * llc)))
    log = lambda text: print(text, flush=True)  # noqa: E731
    blas = BlasThreads()

    env = {
        "cpu": cpu_model(),
        "isa": vector_isa(),
        "cores": os.cpu_count(),
        "llc_bytes": llc,
        "cold_bytes_per_competitor": cold_bytes,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas_threads": blas.how,
        "quick": quick,
        "repeats": repeats,
        "warmup": warmup,
        "loadavg_start": os.getloadavg(),
    }
    log(f"{env['cpu']} ({env['isa']}), {env['cores']} cores, LLC {llc / MIB:.0f} MiB, cold set {cold_bytes / MIB:.0f} MiB per "
        f"competitor, BLAS threads: {blas.how}, load average {env['loadavg_start'][0]:.2f}")
    bw_bytes = (256 if quick else 1024) * MIB
    bandwidth, bandwidth_median = {}, {}
    for t in threads:
        set_threads(t, blas)
        bandwidth[t], bandwidth_median[t] = read_bandwidth(bw_bytes, 7)
    env["numba_threading_layer"] = numba.threading_layer()
    set_threads(1, blas)
    env["copy_bandwidth_1t"] = copy_bandwidth(bw_bytes, 5)
    env["read_bandwidth_best"] = bandwidth
    env["read_bandwidth_median"] = bandwidth_median
    log("read bandwidth (best / median of 7) " + ", ".join(
        f"{t} thread(s) {bandwidth[t] / 1e9:.1f} / {bandwidth_median[t] / 1e9:.1f} GB/s" for t in threads)
        + f"; numpy copy {env['copy_bandwidth_1t'] / 1e9:.1f} GB/s (read + write)")
    log(HEADER)

    rows, layer_info = [], {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            info, layer_rows = bench_layer(
                name, LAYERS[name], batch_list, threads, cold_bytes, warmup, repeats, bandwidth, blas, workdir, log
            )
            layer_info[name] = info
            rows.extend(layer_rows)

    summary = summarize(rows, names, batch_list, threads)
    env["loadavg_end"] = os.getloadavg()
    log("")
    for t, g in summary["geomean_speedup_vs_dense_batch1_cold"].items():
        worst = summary["slowest_layer_batch1_cold"][t]
        log(f"{t} thread(s), batch 1 cold: geometric mean speedup over best dense {g:.2f}x, over torch CSR "
            f"{summary['geomean_speedup_vs_csr_batch1_cold'][t]:.2f}x; slowest layer {worst['layer']} "
            f"{worst['speedup_vs_dense']:.2f}x")
    for name in names:
        cross = ", ".join(f"{t}T: {b}" for t, b in summary["crossover_batch"][name].items())
        log(f"{name}: fp32 CSR bytes / deepzip bytes {layer_info[name]['bytes_ratio_csr_over_deepzip']:.2f}; "
            f"first tested batch where dense wins: {cross}")
    log(f"load average at end {env['loadavg_end'][0]:.2f} (timings are noisy when it exceeds the core count)")
    if json_path:
        Path(json_path).write_text(json.dumps({"env": env, "layers": layer_info, "results": rows, "summary": summary},
                                              indent=1, default=str))
        log(f"wrote {json_path}")


if __name__ == "__main__":
    main()
