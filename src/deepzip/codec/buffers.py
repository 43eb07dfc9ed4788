"""Byte buffers as numpy arrays, for the numba coders (Huffman, rANS) that read them."""

import numpy as np


def as_uint8(data) -> np.ndarray:
    """`data` (bytes, bytearray, memoryview or 1-D uint8 array) as a uint8 array, no copy."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError(f"data must be a 1-D uint8 array, got {data.dtype} {data.shape}")
        return np.ascontiguousarray(data)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
