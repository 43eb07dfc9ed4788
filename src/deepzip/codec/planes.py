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

from deepzip.codec import huffman
from deepzip.codec.buffers import as_uint8
from deepzip.codec.streams import ANS, CODERS, HUFFMAN, CodedStream, decode_stream, encode_stream
from deepzip.errors import FormatError

STORED = -1
"""The `coder` of a plane kept as its n bytes (a CodedStream with no table)."""

LISTED = 3
"""The `coder` of a Huffman-coded plane whose table lists only its used byte values
(`pack_listed`): a 300-value bias's top byte takes about 8 values, whose listed table is
13 bytes where the full one of 256 code lengths is 128."""

ALPHABET = 256


def pack_listed(lengths: np.ndarray) -> bytes:
    """A listed code-length table: u8 m - 1 (m used values), the m values ascending, their 4-bit lengths."""
    used = np.flatnonzero(lengths)
    if not 1 <= used.size <= ALPHABET:
        raise ValueError("a listed table needs 1 to 256 used values")
    return bytes([used.size - 1]) + used.astype(np.uint8).tobytes() + huffman.pack_lengths(lengths[used])


def unpack_listed(data) -> np.ndarray:
    """The 256 code lengths of a listed table; FormatError unless it is exactly one, values ascending, lengths 1..15."""
    data = as_uint8(data)
    if data.size < 1:
        raise FormatError("empty listed code-length table")
    count = int(data[0]) + 1
    if data.size != 1 + count + (count + 1) // 2:
        raise FormatError(f"a listed code-length table of {count} values is {1 + count + (count + 1) // 2} bytes, not {data.size}")
    values = data[1 : 1 + count]
    if count > 1 and np.any(np.diff(values.astype(np.int16)) <= 0):
        raise FormatError("the listed values are not in increasing order")
    lengths = huffman.unpack_lengths(data[1 + count :], count)
    if not lengths.all():
        raise FormatError("a listed value has code length 0")
    out = np.zeros(ALPHABET, dtype=np.uint8)
    out[values] = lengths
    return out


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
        candidates = [CodedStream(STORED, b"", plane.tobytes())]
        for coder in coders if plane.size else ():
            coded = encode_stream(plane, ALPHABET, (coder,), compact=False)  # a plane has its own table modes
            if coder == HUFFMAN:  # the listed table where it is the shorter (ties: the full one)
                listed = pack_listed(huffman.unpack_lengths(coded.table, ALPHABET))
                if len(listed) < len(coded.table):
                    coded = CodedStream(LISTED, listed, coded.data)
            candidates.append(coded)
        # The first of the smallest wins: stored over coded on a tie, as the size fields then cost more.
        planes.append(min(candidates, key=lambda p: p.nbytes + (0 if p.coder == STORED else field_bytes)))
    return tuple(planes)


def decode(planes: tuple[CodedStream, ...], count: int) -> np.ndarray:
    """The `count` values' bytes (uint8, count x len(planes), row-major) from their planes; FormatError if damaged."""
    out = np.empty((count, len(planes)), dtype=np.uint8)
    for j, plane in enumerate(planes):
        if plane.coder == STORED:
            if len(plane.data) != count:
                raise ValueError(f"a stored plane of {len(plane.data)} bytes for {count} values")
            out[:, j] = np.frombuffer(plane.data, dtype=np.uint8)
        elif plane.coder == LISTED:
            out[:, j] = huffman.decode(plane.data, unpack_listed(plane.table), count)
        else:
            out[:, j] = decode_stream(plane.coder, plane.table, plane.data, ALPHABET, count)
    return out


__all__ = ["ANS", "HUFFMAN", "LISTED", "STORED", "CodedStream", "decode", "encode", "pack_listed", "split", "unpack_listed"]
