"""Magnitude pruning masks: pure functions from a weight (and its current mask) to a new mask.

The one magnitude selection of deepzip: the training path (`prune_`), the post-training path
(`compress`) and the sensitivity scans all call `sparsity_mask` (or `sparsity_positions`,
the same selection as kept positions). It runs on the weight's device and breaks ties at the
threshold by position (lowest flat index first), so the kept count is exact and the mask is
the same on every device and every run.

On the CPU the threshold is found by counting, not by sorting or selecting over a copy of
the scores: a magnitude's float bits, sign cleared, order like the magnitude itself, so a
histogram of their top 16 bits, then of the next 16 among the entries in the threshold's
bin, pins the threshold exactly (one pass for 16-bit dtypes, two for 32-bit scores). Every
pass reads the tensor a chunk at a time, so a layer of hundreds of millions of weights needs
no temporary of its size beside the result.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from deepzip.errors import ConfigError

__all__ = ["quality_mask", "sparsity_mask", "sparsity_positions"]

# Entries read at a time on the CPU: keys, flags and bincount's intp copy stay near 30 MiB.
_CHUNK = 1 << 21
_BIN_BITS = 16
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _alive(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if tuple(mask.shape) != tuple(weight.shape):
        raise ConfigError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    return mask.to(device=weight.device, dtype=torch.bool)


def _keep_count(weight: torch.Tensor, sparsity) -> int:
    """How many entries `sparsity` keeps of the whole tensor; ConfigError unless it is in [0, 1]."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ConfigError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    return round((1.0 - sparsity) * weight.numel())


def _kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    try:
        return torch.kthvalue(scores, scores.numel() - k + 1).values
    except (NotImplementedError, RuntimeError):  # kthvalue is missing on some backends (MPS)
        return torch.topk(scores, k, sorted=False).values.min()


def sparsity_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the round((1 - sparsity) * numel) largest-magnitude weights among the survivors.

    `sparsity` is the fraction of the whole tensor that ends up zero. Weights already
    pruned by `mask` stay pruned, so asking for less sparsity than the tensor has keeps the
    current mask (pruning never revives a weight). Among weights of equal magnitude at the
    threshold, the lowest flat positions are kept. Magnitudes are compared as float32 (an
    fp64 weight's magnitude rounded to float32). Returns a bool tensor on the weight's device.
    """
    keep = _keep_count(weight, sparsity)
    if weight.device.type != "cpu" or weight.dtype not in _CPU_DTYPES:
        return _torch_mask(weight, keep, mask)
    flat = weight.detach().reshape(-1)
    alive = None if mask is None else _alive(weight, mask).reshape(-1).numpy()
    alive_count = flat.numel() if alive is None else int(np.count_nonzero(alive))
    if keep >= alive_count:
        return _alive(weight, mask).clone()
    kept = np.zeros(flat.numel(), dtype=bool)
    if keep > 0:
        for start, flags in _kept_chunks(flat, alive, keep):
            kept[start : start + flags.size] = flags
    return torch.from_numpy(kept).view(weight.shape)


def sparsity_positions(weight: torch.Tensor, sparsity: float) -> np.ndarray | None:
    """The flat positions `sparsity_mask(weight, sparsity)` keeps, as ascending int64; None if all.

    The same selection, for the post-training path: on the CPU no full-size mask is built,
    only the kept positions, so a dense result (every weight kept) costs nothing at all.
    """
    keep = _keep_count(weight, sparsity)
    if keep >= weight.numel():
        return None
    if keep == 0:
        return np.zeros(0, dtype=np.int64)
    if weight.device.type != "cpu" or weight.dtype not in _CPU_DTYPES:
        return torch.nonzero(_torch_mask(weight, keep, None).flatten()).flatten().cpu().numpy().astype(np.int64)
    # Exactly `keep` entries are kept, so the result is filled in place: no list of pieces
    # to concatenate into a second copy.
    positions = np.empty(keep, dtype=np.int64)
    filled = 0
    for start, flags in _kept_chunks(weight.detach().reshape(-1), None, keep):
        found = np.flatnonzero(flags)
        positions[filled : filled + found.size] = found + start
        filled += found.size
    return positions


def _torch_mask(weight: torch.Tensor, keep: int, mask: torch.Tensor | None) -> torch.Tensor:
    """sparsity_mask keeping `keep` entries, with torch's selection on the weight's own device (GPUs)."""
    alive = _alive(weight, mask)
    if keep >= int(alive.sum()):
        return alive.clone()
    if keep == 0:
        return torch.zeros_like(alive)
    # Pruned entries score -1, below every real magnitude, so they are never kept.
    scores = weight.detach().abs().float().masked_fill_(~alive, -1.0).flatten()
    threshold = _kth_largest(scores, keep)
    above = scores > threshold
    ties = scores == threshold
    del scores
    needed = keep - int(above.sum())
    # The first `needed` ties in position order: a running count over the tie flags.
    rank_dtype = torch.int32 if ties.numel() < 2**31 else torch.int64
    kept = above | (ties & (torch.cumsum(ties, 0, dtype=rank_dtype) <= needed))
    return kept.view(weight.shape)


def _magnitude_keys(chunk: torch.Tensor) -> np.ndarray:
    """Unsigned integers that order like the float32 magnitudes of a CPU chunk (ties alike).

    A non-negative float's bit pattern, read as an unsigned integer, is monotone in its
    value (NaN patterns come above infinity), so clearing the sign bit gives |w| as an
    integer key without any arithmetic. 16-bit floats widen to float32 exactly, so their
    own 15 bits order the same; fp64 is rounded to float32 first, as the torch path scores.
    """
    if chunk.dtype in (torch.float16, torch.bfloat16):
        return chunk.view(torch.int16).numpy().view(np.uint16) & np.uint16(0x7FFF)
    if chunk.dtype == torch.float64:
        chunk = chunk.float()
    return chunk.view(torch.int32).numpy().view(np.uint32) & np.uint32(0x7FFFFFFF)


def _chunks(flat: torch.Tensor) -> Iterator[tuple[int, np.ndarray]]:
    """(start, magnitude keys) for each chunk of the flat CPU tensor."""
    for start in range(0, flat.numel(), _CHUNK):
        yield start, _magnitude_keys(flat[start : start + _CHUNK])


def _threshold(flat: torch.Tensor, alive: np.ndarray | None, keep: int) -> tuple[int, int]:
    """(key of the keep-th largest alive magnitude, how many alive keys lie strictly above it).

    A radix selection from the top: count the keys' top 16 bits, find the bin holding the
    keep-th largest, then count the next 16 bits of the keys in that bin, and so on.
    """
    width = 16 if flat.dtype in (torch.float16, torch.bfloat16) else 32
    prefix, above, rank = 0, 0, keep
    for low in range(width - _BIN_BITS, -1, -_BIN_BITS):
        counts = np.zeros(1 << _BIN_BITS, dtype=np.int64)
        for start, keys in _chunks(flat):
            take = None if alive is None else alive[start : start + keys.size]
            if low + _BIN_BITS < width:  # only the keys in the bin chosen so far
                inside = (keys >> (low + _BIN_BITS)) == prefix
                take = inside if take is None else take & inside
            if take is not None:
                keys = keys[take]
            counts += np.bincount((keys >> low) & ((1 << _BIN_BITS) - 1), minlength=1 << _BIN_BITS)
        from_top = np.cumsum(counts[::-1])
        top = int(np.searchsorted(from_top, rank))  # first bin (from the top) reaching the rank
        bin_ = (1 << _BIN_BITS) - 1 - top
        higher = int(from_top[top] - counts[bin_])
        above, rank = above + higher, rank - higher
        prefix = (prefix << _BIN_BITS) | bin_
    return prefix, above


def _kept_chunks(flat: torch.Tensor, alive: np.ndarray | None, keep: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, kept flags) per chunk: the keep largest alive magnitudes, ties to the lowest positions.

    Needs 0 < keep < number of alive entries. The running count of ties at the threshold is
    carried from chunk to chunk, so the rule is the one a single cumulative sum would give.
    """
    threshold, above = _threshold(flat, alive, keep)
    needed = keep - above  # ties at the threshold still to keep, first come first kept
    for start, keys in _chunks(flat):
        flags = keys > threshold
        ties = keys == threshold
        if alive is not None:
            live = alive[start : start + keys.size]
            flags &= live
            ties &= live
        if needed > 0 and ties.any():
            ties &= np.cumsum(ties) <= needed
            needed -= int(np.count_nonzero(ties))
            flags |= ties
        yield start, flags


def quality_mask(weight: torch.Tensor, quality: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The papers' rule: prune |w| < quality * std(surviving weights of the layer)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or quality < 0:
        raise ConfigError(f"quality must be a number >= 0, got {quality!r}")
    alive = _alive(weight, mask)
    survivors = weight.detach()[alive].float()
    if survivors.numel() < 2:
        return alive.clone()
    threshold = quality * survivors.std()
    return alive & (weight.detach().abs() >= threshold)
