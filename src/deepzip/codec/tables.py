"""Sizes of the coded tables, with no numpy or numba: the header reader needs them alone."""


def lengths_table_size(alphabet_size: int) -> int:
    """Bytes of a packed code-length table (two 4-bit lengths per byte)."""
    return (alphabet_size + 1) // 2
