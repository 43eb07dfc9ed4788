"""One large dense tensor through `compress_tensor`: seconds and peak RSS over the tensor itself.

The largest tensor of a 3e9-parameter fp16 checkpoint (a 65536x4096 embedding, 268 M
weights, 512 MiB) compressed with 4 bits and no pruning, in this process: 16-bit weights
are clustered on their histogram, so the memory beyond the tensor should be its uint8 codes
(1 byte a weight) and a few MiB. The tensor is filled in slices, so building it leaves no
peak of its own above the one measured.

    python benchmarks/dense_tensor.py [--rows 65536] [--dtype fp16|bf16|fp32] [--bits 4]
        [--sparsity 0.0] [--json results.json]
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import click

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def rss_bytes() -> int:
    """Resident set size now, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@click.command()
@click.option("--rows", type=int, default=65536, show_default=True, help="Rows of the rows x 4096 tensor.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="fp16", show_default=True)
@click.option("--bits", type=int, default=4, show_default=True)
@click.option("--sparsity", type=float, default=0.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results here.")
def main(rows: int, dtype: str, bits: int, sparsity: float, json_path: str | None) -> None:
    """Time compress_tensor on one rows x 4096 tensor; report the peak RSS above the tensor."""
    import torch

    from deepzip.train.post_training import compress_tensor

    torch.set_num_threads(2)
    torch_dtype = getattr(torch, DTYPES[dtype])
    generator = torch.Generator().manual_seed(0)
    weight = torch.empty(rows, 4096, dtype=torch_dtype)
    for start in range(0, rows, 4096):
        weight[start : start + 4096] = (torch.randn(min(4096, rows - start), 4096, generator=generator) * 0.02).to(torch_dtype)
    with_tensor = rss_bytes()
    started = time.perf_counter()
    record = compress_tensor(weight, sparsity=sparsity, bits=bits)
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    n = weight.numel()
    results = {
        "shape": [rows, 4096], "dtype": dtype, "bits": bits, "sparsity": sparsity, "numel": n,
        "tensor_bytes": n * weight.element_size(), "seconds": seconds, "mweights_per_s": n / seconds / 1e6,
        "rss_with_tensor_bytes": with_tensor, "peak_rss_bytes": peak, "peak_above_tensor_bytes": peak - with_tensor,
        "dense": record.positions is None, "codes_dtype": str(record.codes.dtype), "centroids": len(record.codebook),
    }  # fmt: skip
    click.echo(f"{dtype} {rows}x4096: {n / 1e6:.0f} M weights, {n * weight.element_size() / 2**20:.0f} MiB; bits {bits}, sparsity {sparsity}")
    click.echo(f"compress_tensor: {seconds:.2f} s, {seconds / n * 1e8:.2f} s per 100 M, {n / seconds / 1e6:.0f} M weights/s")
    click.echo(
        f"RSS with the tensor {with_tensor / 2**20:.0f} MiB, process peak {peak / 2**20:.0f} MiB: "
        f"{(peak - with_tensor) / 2**20:.0f} MiB above ({(peak - with_tensor) / n:.2f} bytes a weight)"
    )
    click.echo(f"record: dense={record.positions is None}, codes {record.codes.dtype}, {len(record.codebook)} centroids")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
