"""Byte planes of fixed-width values, each stored as is or entropy coded: lossless, bit for bit.

A float's bytes are not alike. The top byte of a float32 (sign and seven exponent bits)
takes a handful of values across a layer's biases or a codebook, while the low mantissa
bytes are close to uniform. Splitting n values of w bytes into w planes (plane j holds byte
j of every value, little-endian order) and coding each plane over its 256 byte values with
the smaller of Huffman and rANS (`deepzip.codec.streams`), or storing it where coding does
not pay, shrinks float32 biases by about a sixth and leaves nothing to undo: the decoded
bytes are the original bytes. Format version 5 stores raw tensors and codebook entries so
(docs/FORMAT.md, "Byte planes"). Pure functions over numpy arrays; the container lays out
the planes and their sizes.
"""

from __future__ import annotations

import numpy as np

from deepzip.codec.streams import ANS, CODERS, HUFFMAN, CodedStream, decode_stream, encode_stream

STORED = -1
"""The `coder` of a plane kept as its n bytes (a CodedStream with no table)."""

ALPHABET = 256


def split(values: np.ndarray, width: int) -> np.ndarray:
    """The (width, n) byte planes of `values`, any array whose bytes are n values of `width` bytes."""
    flat = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    if flat.size % width:
        raise ValueError(f"{flat.size} bytes are not values of {width} bytes")
    return flat.reshape(-1, width).T


def encode(values: np.ndarray, width: int, coders: tuple[int, ...] = CODERS, field_bytes: int = 3) -> tuple[CodedStream, ...]:
    """Each byte plane of `values` coded by the smallest of `coders`, or stored where that is smaller.

    `field_bytes` is what a coded plane costs the container beyond its table and data (its
    size fields), so that the choice is made on the bytes the file will really hold.
    """
    planes = []
    for plane in split(values, width):
        stored = CodedStream(STORED, b"", plane.tobytes())
        coded = encode_stream(plane, ALPHABET, coders) if plane.size else None
        planes.append(stored if coded is None or coded.nbytes + field_bytes >= stored.nbytes else coded)
    return tuple(planes)


def decode(planes: tuple[CodedStream, ...], count: int) -> np.ndarray:
    """The `count` values' bytes (uint8, count x len(planes), row-major) from their planes; FormatError if damaged."""
    out = np.empty((count, len(planes)), dtype=np.uint8)
    for j, plane in enumerate(planes):
        if plane.coder == STORED:
            if len(plane.data) != count:
                raise ValueError(f"a stored plane of {len(plane.data)} bytes for {count} values")
            out[:, j] = np.frombuffer(plane.data, dtype=np.uint8)
        else:
            out[:, j] = decode_stream(plane.coder, plane.table, plane.data, ALPHABET, count)
    return out


__all__ = ["ANS", "HUFFMAN", "STORED", "CodedStream", "decode", "encode", "split"]
