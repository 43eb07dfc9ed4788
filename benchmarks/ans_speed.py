"""rANS codec throughput and size against entropy, beside deepzip's Huffman (and constriction).

Synthetic streams: 4-bit-entropy ones (16 uniform symbols; 32 with geometric probabilities),
a skewed 8-symbol one (~0.7 bits a symbol, where Huffman's 1-bit floor hurts most) and a
4097-symbol one (a full 12-bit codebook plus the filler). For each it times encode and
decode single-threaded (medians, after a warm-up call that also compiles) and reports bytes
over the empirical entropy, tables included. constriction's ANS is timed too if installed
(without a table: its model is taken as known).

    python benchmarks/ans_speed.py [--symbols 10000000] [--repeats 5]
"""

from __future__ import annotations

import time

import click
import numpy as np

from deepzip.codec import ans, huffman


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def streams(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    skewed = [0.9, 0.05, 0.02, 0.01, 0.01, 0.005, 0.003, 0.002]
    geometric = 0.85 ** np.arange(32)
    return {
        "16 uniform (4.0 b)": rng.integers(0, 16, n).astype(np.uint8),
        "32 geometric (4.0 b)": rng.choice(32, n, p=geometric / geometric.sum()).astype(np.uint8),
        "8 skewed (0.7 b)": rng.choice(8, n, p=skewed).astype(np.uint8),
        "4097 skewed": rng.choice(4097, n // 5, p=rng.dirichlet(np.full(4097, 0.3))).astype(np.uint16),
    }


def measure(name: str, symbols: np.ndarray, repeats: int, constriction) -> None:
    """Print one line per coder for one stream: speeds and bytes over its entropy."""
    n, alphabet = symbols.size, 4097 if symbols.dtype == np.uint16 else 256
    counts = np.bincount(symbols, minlength=alphabet)
    c = counts[counts > 0].astype(np.float64)
    entropy = float(-(c * np.log2(c / n)).sum() / 8)

    def row(coder, precision, encode, decode, nbytes, note=""):
        enc, dec = median_seconds(encode, repeats), median_seconds(decode, repeats)
        over = 100 * (nbytes / entropy - 1)
        click.echo(f"{name:22} {coder:12} {precision:>2} {n / enc / 1e6:11.1f} {n / dec / 1e6:11.1f} {over:12.3f}% {note}")

    freqs = ans.quantize_frequencies(counts)
    data = ans.encode(symbols, freqs)
    assert np.array_equal(ans.decode(data, freqs, n), symbols)
    precision = int(freqs.sum()).bit_length() - 1
    size = len(ans.pack_table(freqs)) + len(data)
    row("rANS", precision, lambda: ans.encode(symbols, freqs), lambda: ans.decode(data, freqs, n), size)

    lengths = huffman.code_lengths(counts, max(12, (int(np.count_nonzero(counts)) - 1).bit_length()))
    coded = huffman.encode(symbols, lengths)
    size = len(huffman.pack_lengths(lengths)) + len(coded)
    row("Huffman", "", lambda: huffman.encode(symbols, lengths), lambda: huffman.decode(coded, lengths, n), size)

    if constriction is not None:
        used = np.flatnonzero(counts)
        model = constriction.stream.model.Categorical(counts[used] / n, perfect=False)
        ranks = np.searchsorted(used, symbols).astype(np.int32)  # its alphabet is the used symbols

        def encode():
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(ranks, model)
            return coder.get_compressed()

        words = encode()
        decode = lambda: constriction.stream.stack.AnsCoder(words).decode(model, n)
        row("constriction", 24, encode, decode, 4 * words.size, "(no table)")


@click.command()
@click.option("--symbols", default=10_000_000, show_default=True, help="Symbols per stream (the 4097 one has a fifth).")
@click.option("--repeats", default=5, show_default=True, help="Timed repeats per measurement (median).")
def main(symbols: int, repeats: int) -> None:
    """Time rANS encode/decode and compare its size with the entropy and with Huffman."""
    try:
        import constriction
    except ImportError:
        constriction = None
    click.echo(f"{'stream':22} {'coder':12} {'P':>2} {'encode M/s':>11} {'decode M/s':>11} {'over entropy':>13}")
    for name, stream in streams(symbols, np.random.default_rng(0)).items():
        measure(name, stream, repeats, constriction)


if __name__ == "__main__":
    main()
