"""Coded payload bits of a .dzip file against its streams' empirical (order-0) entropy.

    python benchmarks/coding_entropy.py FILE.dzip [FILE.dzip ...]

For every codebook record: the symbol streams as the file codes them (weight codes with
fillers, and gap symbols of the record's index width), their empirical entropy (the size
an ideal coder of their own symbol counts reaches, tables not counted), the streams'
bytes in the file, and what Huffman alone would have spent on the same streams. Tables
are reported apart. A record whose positions are significance flags (format version 4) is
measured against the paper's form of the same weights, gaps at the width the codec would
pick for them: its "over" is negative where the context model beats order-0 coding.
"""

from __future__ import annotations

import argparse

import numpy as np

from deepzip import container
from deepzip.codec import sparse
from deepzip.codec.layer import encode_layer_smallest
from deepzip.codec.streams import counts_of, huffman_bytes, huffman_lengths
from deepzip.codec.tables import lengths_table_size


def entropy_bits(counts: np.ndarray) -> float:
    """sum(-n log2(n / N)) of symbol counts: the order-0 empirical entropy of the stream, in bits."""
    n = counts[counts > 0].astype(np.float64)
    return float(-(n * np.log2(n / n.sum())).sum())


def streams(record, numel: int):
    """(code symbols, alphabet, gap symbols or None, alphabet) of a decoded codebook record."""
    k = len(record.codebook)
    if record.positions is None:
        return record.codes, k + 1, None, 0
    # Significance flags have no width: the paper's form gets the one the codec would pick.
    b = record.index_bits or encode_layer_smallest(record.positions, record.codes, k, numel).index_bits
    gaps = sparse.narrow_gaps(record.positions, numel)
    tail = numel - int(record.positions[-1]) - 1 if len(record.positions) else numel
    gap_symbols, code_symbols = sparse.relative_symbols(gaps, record.codes, b, k, tail)
    return code_symbols, k + 1, gap_symbols, 1 << b


def over(size: float, entropy: float) -> str:
    """`size` above `entropy` in percent ('-' for a stream of zero entropy)."""
    return f"{100 * (size / entropy - 1):>6.2f}%" if entropy else "      -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for path in args.files:
        source = container.open_file(path)
        total = {"entropy": 0.0, "coded": 0, "huffman": 0, "tables": 0}
        print(f"{path}")
        print(f"{'tensor':<24} {'entropy B':>10} {'coded B':>9} {'over':>7} {'Huffman B':>10} {'over':>7} {'tables B':>9}")
        for r in source.header.records:
            if r.encoding != container.ENCODING_CODEBOOK or r.name in source.aliases:
                continue
            record = source.decode(r.name)
            entropy, huff = 0.0, 0
            codes, code_alphabet, gaps, gap_alphabet = streams(record, r.numel)
            for symbols, alphabet in [(codes, code_alphabet)] + ([(gaps, gap_alphabet)] if gaps is not None else []):
                counts = counts_of(symbols, alphabet)
                entropy += entropy_bits(counts)
                huff += huffman_bytes(counts, huffman_lengths(counts)) - lengths_table_size(alphabet)  # stream only
            coded = r.code_bytes + r.gap_bytes
            tables = r.code_table_bytes + r.gap_table_bytes
            e = entropy / 8
            print(f"{r.name:<24} {e:>10,.0f} {coded:>9,} {over(coded, e)} {huff:>10,} {over(huff, e)} {tables:>9,}")
            for key, value in (("entropy", e), ("coded", coded), ("huffman", huff), ("tables", tables)):
                total[key] += value
        e = total["entropy"]
        print(
            f"{'all':<24} {e:>10,.0f} {total['coded']:>9,} {over(total['coded'], e)} "
            f"{total['huffman']:>10,} {over(total['huffman'], e)} {total['tables']:>9,}"
        )


if __name__ == "__main__":
    main()
