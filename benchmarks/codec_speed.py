"""Huffman codec throughput on the streams of a layer with 10 M surviving weights.

Builds a 4096 x 25088 layer (VGG-16 fc6's shape) of normal weights, keeps the largest 10%
(10.3 M weights), shares them among 32 centroids (5-bit codes) and takes the layer's two
streams: weight codes (with fillers) and relative-index gaps. For each stream it times,
single-threaded, deepzip's Huffman encode and decode against zstd and zlib on the same
symbols (one byte per symbol), and reports bits per symbol against the stream's empirical
entropy. Also times the gap/filler expansion both ways. Medians over repeats.

    python benchmarks/codec_speed.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import click
import numpy as np


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical (order-0) entropy in bits per symbol."""
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


@click.command()
@click.option("--repeats", default=5, show_default=True, help="Timed repeats per measurement (median).")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results here.")
def main(repeats: int, json_path: str | None) -> None:
    """Time deepzip's Huffman coder against zstd and zlib on real layer streams."""
    import torch

    from deepzip.codec import huffman, sparse
    from deepzip.codec.layer import encode_layer_smallest
    from deepzip.train.post_training import compress_tensor

    torch.set_num_threads(1)
    try:
        import zstandard
    except ImportError:  # optional: `pip install zstandard` to compare against it
        zstandard = None

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((4096, 25088), generator=generator)
    record = compress_tensor(weight, sparsity=0.9, bits=5)
    del weight
    k, numel = len(record.codebook), record.numel
    index_bits = encode_layer_smallest(record.positions, record.codes, k, numel).index_bits
    gaps, codes = sparse.to_relative(record.positions, record.codes, index_bits, k, numel)
    click.echo(f"layer 4096x25088, {len(record.positions):,} kept weights, k={k}, index bits {index_bits}, {len(gaps):,} entries")

    results = {"kept": len(record.positions), "entries": len(gaps), "k": k, "index_bits": index_bits, "streams": {}}
    expand = median_seconds(lambda: sparse.to_relative(record.positions, record.codes, index_bits, k, numel), repeats)
    collapse = median_seconds(lambda: sparse.from_relative(gaps, codes, index_bits, k, numel, ends_covered=True), repeats)
    results["gap_expansion_msym_s"] = len(gaps) / expand / 1e6
    results["gap_collapse_msym_s"] = len(gaps) / collapse / 1e6

    rows = []
    for stream_name, symbols in (("weight codes", codes), ("gaps", gaps)):
        n = symbols.size
        lengths = huffman.code_lengths(np.bincount(symbols))
        encoded = huffman.encode(symbols, lengths)
        assert np.array_equal(huffman.decode(encoded, lengths, n), symbols)
        entropy = entropy_bits(symbols)
        stream = {"symbols": n, "entropy_bits": entropy, "coders": {}}

        def record_coder(name, encode, decode, size_bytes):
            enc = median_seconds(encode, repeats)
            dec = median_seconds(decode, repeats)
            bits = 8 * size_bytes / n
            stream["coders"][name] = {
                "encode_msym_s": n / enc / 1e6,
                "decode_msym_s": n / dec / 1e6,
                "bits_per_symbol": bits,
                "over_entropy_pct": 100 * (bits / entropy - 1),
            }
            rows.append((stream_name, name, n / enc / 1e6, n / dec / 1e6, bits, entropy))

        record_coder(
            "deepzip Huffman (numba)",
            lambda: huffman.encode(symbols, lengths),
            lambda: huffman.decode(encoded, lengths, n),
            len(encoded),
        )
        as_bytes = symbols.astype(np.uint8).tobytes()  # every symbol here is < 256
        for level in (6, 9):
            packed = zlib.compress(as_bytes, level)
            record_coder(f"zlib -{level}", lambda lv=level: zlib.compress(as_bytes, lv), lambda p=packed: zlib.decompress(p), len(packed))
        if zstandard is not None:
            for level in (3, 19):
                compressor = zstandard.ZstdCompressor(level=level)
                packed = compressor.compress(as_bytes)
                decompressor = zstandard.ZstdDecompressor()
                record_coder(
                    f"zstd -{level}", lambda c=compressor: c.compress(as_bytes), lambda p=packed: decompressor.decompress(p), len(packed)
                )
        results["streams"][stream_name] = stream

    click.echo(f"gap/filler expansion {results['gap_expansion_msym_s']:.0f} M entries/s, collapse {results['gap_collapse_msym_s']:.0f} M entries/s")
    click.echo(f"{'stream':13} {'coder':24} {'encode M/s':>11} {'decode M/s':>11} {'bits/sym':>9} {'entropy':>8} {'over':>7}")
    for stream_name, name, enc, dec, bits, entropy in rows:
        click.echo(f"{stream_name:13} {name:24} {enc:11.1f} {dec:11.1f} {bits:9.3f} {entropy:8.3f} {100 * (bits / entropy - 1):6.1f}%")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
