"""Direct sparse convolution (Park et al., ICLR 2017): a pruned conv weight applied without im2col.

For each output channel and each kept weight w at (ic, ky, kx), the kernel adds w times a
shifted slice of input plane ic to the output plane. Two layout tricks make that slice
one contiguous run, so LLVM vectorizes the inner loop whatever the stride:

* "wide" output rows: the output is computed Wq columns wide, Wq the (padded) input row
  length over the stride, so output pixel (y, x) sits at flat index t = y*Wq + x and the
  input it needs at flat index off(ic, ky, kx) + t. One loop of OH*Wq runs over the
  whole plane; the Wq - OW columns past the end of each row are junk and dropped.
* stride s: the padded input is split once per call into s*s phase planes (even/odd rows
  and columns for s = 2); the weight at (ky, kx) reads phase (ky % s, kx % s) shifted by
  (ky // s, kx // s), so a strided conv is s*s stride-1 convs over smaller planes.

The weight is CSR per output channel over (ic, ky, kx) with float32 values. Measured
against torch's F.conv2d (oneDNN) on a 2-core AMD EPYC (Zen 3, AVX2, 32 MiB L3), batch 1,
1 thread, interleaved calls, min over rounds of medians, ms, by weights taken per pass
over the output plane:

    weights per pass                          1     4     6   8 (this)  12    16   dense
    AlexNet conv3 (384x256x3x3, 13x13, 35%)  6.1   3.7   3.2   3.4     3.6   4.3    4.7
    VGG-16 conv4_1 (512x256x3x3, 28x28, 32%) 24.9  16.1  16.3  14.9    16.3  19.1  24.2

and, as time over this kernel's in the same runs (the machine was shared, so absolute
times drifted between runs): per-output-row loops (13 or 26 floats) instead of wide rows
8x / 9x; output tiles of 256-1024 pixels, tile-outer so the input tile stays in L2, 1.0x /
1.0-1.9x; register tiles (hand-written LLVM IR: 16-64 outputs in ymm registers over all
of a channel's weights) 1.2-1.6x / 1.7-2.7x; a uint8 code into a float32 codebook
instead of values 1.0x / 1.0x; a 64-byte aligned output plane 1.0x / 1.0x.

Eight weights per pass amortize the load and store of the output plane (it stays in L1)
over eight FMAs; fewer are bound by that traffic, more pay for runtime alias checks (LLVM
checks the plane against every input slice) and register spills. Each FMA still needs its
own unaligned input load, nearly half of which straddle cache lines: that, not the FMA units,
bounds the kernel (VGG conv4_1: 21 G FMA/s, junk columns included, against dense
oneDNN's 38 G, which broadcasts one input to many output channels held in registers;
unstructured sparsity gives no two channels a common pattern to share loads). Register tiles lose because each
weight then costs three dependent scalar loads (column, offset, value) for a few vector
loads, and its input comes from a different plane each time (cache misses on the larger
layers). Output tiles did not beat the whole plane: the plane and eight input slices fit
in L1/L2 for these layers, and each tile repeats the per-weight setup. The codebook
lookup costs nothing measurable (one per OH*Wq FMAs), so values are float32 for
simplicity. The junk columns cost (KW-1)/Wq more FMAs (15% on 13x13 layers). Speedups
over dense per layer and thread count: benchmarks/conv_speed.py.

Numerics: each output is accumulated in float32, weights in CSR order (ic, ky, kx), into
one running sum; `fastmath={"contract"}` only lets each multiply-add become one FMA
(exact product, one rounding). Nothing is reassociated, so results do not depend on the
thread count, and NaN or infinity in x propagate through every kept weight (a pruned
weight is absent, not a zero that turns NaN into NaN as in a dense conv).

`SparseConv2d` wraps the kernel as an inference-only replacement for nn.Conv2d (groups=1,
dilation 1, zero padding), built from a codebook tensor; `deepzip.load_into(...,
layout="sparse")` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from deepzip.compressed import CodebookTensor
from deepzip.errors import ConfigError
from deepzip.runtime import kernels
from deepzip.runtime.sparse_linear import check_input

__all__ = ["PackedConv", "SparseConv2d", "conv2d", "conv2d_settings", "pack_conv"]

_UINT16_LIMIT = 1 << 16


@dataclass(frozen=True)
class PackedConv:
    """A pruned (out, in, kh, kw) conv weight in CSR form per output channel, for `conv2d`.

    Output channel o's weights are ``values[j]`` at flat positions ``cols[j]`` =
    ic*kh*kw + ky*kw + kx for j in ``row_ptr[o]:row_ptr[o+1]``, increasing within a
    channel. Build it with `pack_conv`; a hand-made one is checked here (ConfigError),
    because the compiled kernel does no bounds checks. The arrays are made read-only.
    """

    shape: tuple[int, int, int, int]
    row_ptr: np.ndarray  # uint64 [out + 1]
    cols: np.ndarray  # uint16 (in*kh*kw <= 65536) or uint32 [nnz]
    values: np.ndarray  # float32 [nnz]

    def __post_init__(self):
        if len(self.shape) != 4 or min(self.shape) < 1:
            raise ConfigError(f"PackedConv shape must be a non-empty (out, in, kh, kw), got {self.shape}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        out = self.shape[0]
        for name, dtypes, length in (("row_ptr", (np.uint64,), out + 1), ("cols", (np.uint16, np.uint32), None), ("values", (np.float32,), None)):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype.type not in dtypes or not array.flags.c_contiguous:
                raise ConfigError(f"PackedConv {name} must be a 1-D contiguous {' or '.join(np.dtype(d).name for d in dtypes)} array")
            if length is not None and array.shape[0] != length:
                raise ConfigError(f"PackedConv {name} has {array.shape[0]} entries, expected {length}")
        nnz = self.values.shape[0]
        if self.row_ptr[0] != 0 or self.row_ptr[-1] != nnz or np.any(self.row_ptr[1:] < self.row_ptr[:-1]) or self.cols.shape[0] != nnz:
            raise ConfigError(f"PackedConv row_ptr must rise from 0 to the {nnz} values and columns")
        if nnz and int(self.cols.max()) >= self.shape[1] * self.shape[2] * self.shape[3]:
            raise ConfigError(f"PackedConv column {int(self.cols.max())} is outside the {self.shape[1:]} kernel")
        for array in (self.row_ptr, self.cols, self.values):
            array.flags.writeable = False

    @property
    def nnz(self) -> int:
        """Number of kept (nonzero) weights."""
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        """Kept fraction of the weights."""
        return self.nnz / int(np.prod(self.shape))


def pack_conv(weight) -> PackedConv:
    """Pack a conv weight for `conv2d`: a 4-D (out, in, kh, kw) float tensor or array, or a
    4-D `deepzip.CodebookTensor` (decoded to its dense values first; conv weights are small).

    Zeros are dropped, so any dense weight works (a pruned one is just faster). Values are
    converted to float32. Raises ConfigError for anything that is not a non-empty 4-D
    floating weight.
    """
    if isinstance(weight, CodebookTensor):
        weight = weight.to_dense()
    if isinstance(weight, torch.Tensor):
        if not weight.is_floating_point():
            raise ConfigError(f"pack_conv needs a floating weight, got {weight.dtype}")
        weight = weight.detach().to(device="cpu", dtype=torch.float32).numpy()
    if not isinstance(weight, np.ndarray) or weight.dtype.kind != "f":
        got = weight.dtype if isinstance(weight, np.ndarray) else type(weight).__name__
        raise ConfigError(f"pack_conv needs a float tensor, array or CodebookTensor, got {got}")
    if weight.ndim != 4 or min(weight.shape) < 1:
        raise ConfigError(f"pack_conv needs a non-empty (out, in, kh, kw) weight, got shape {weight.shape}")
    out = weight.shape[0]
    flat = np.ascontiguousarray(weight, dtype=np.float32).reshape(out, -1)
    rows, cols = np.nonzero(flat)  # row-major: sorted by channel, then by column
    row_ptr = np.zeros(out + 1, dtype=np.uint64)
    np.cumsum(np.bincount(rows, minlength=out), out=row_ptr[1:])
    col_dtype = np.uint16 if flat.shape[1] <= _UINT16_LIMIT else np.uint32
    return PackedConv(weight.shape, row_ptr, cols.astype(col_dtype), flat[rows, cols])


def _pair(value, name: str, low: int) -> tuple[int, int]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low for v in pair):
        raise ConfigError(f"{name} must be an int >= {low} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d(packed: PackedConv, x, bias=None, stride=1, padding=0):
    """F.conv2d(x, W, bias, stride, padding) for the packed W (groups=1, dilation 1, zero padding).

    `x` is float32 (N, in, H, W), a CPU torch tensor or a numpy array; the result is the
    same kind, float32 (N, out, OH, OW). `bias` is None or float32-convertible of shape
    (out,). `stride` and `padding` are ints or (h, w) pairs. Runs on numba's current thread
    count (`numba.set_num_threads`). Raises ConfigError for a wrong type, dtype or shape,
    or an output smaller than one pixel, before any compiled code runs.
    """
    if not isinstance(packed, PackedConv):
        raise ConfigError(f"conv2d needs a PackedConv (see pack_conv), got {type(packed).__name__}")
    as_torch = isinstance(x, torch.Tensor)
    if as_torch:
        if x.device.type != "cpu" or x.requires_grad and torch.is_grad_enabled():
            raise ConfigError("conv2d runs on CPU tensors without autograd (use torch.no_grad())")
        x = x.detach().numpy() if x.dtype == torch.float32 else x
    out_c, in_c, kh, kw = packed.shape
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != in_c:
        got = f"{x.dtype} {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__
        raise ConfigError(f"conv2d x must be float32 of shape (N, {in_c}, H, W), got {got}")
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    n, _, h, w = x.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if hp < kh or wp < kw:
        raise ConfigError(f"conv2d input {h}x{w} with padding {(ph, pw)} is smaller than the {kh}x{kw} kernel")
    if bias is None:
        bias = np.zeros(out_c, dtype=np.float32)
    else:
        if isinstance(bias, torch.Tensor) and bias.is_floating_point():
            bias = bias.detach().to(device="cpu", dtype=torch.float32).numpy()
        if not isinstance(bias, np.ndarray) or bias.shape != (out_c,) or bias.dtype.kind != "f":
            got = f"{bias.dtype} {bias.shape}" if isinstance(bias, np.ndarray) else type(bias).__name__
            raise ConfigError(f"conv2d bias must be a float array of shape ({out_c},), got {got}")
        bias = np.ascontiguousarray(bias, dtype=np.float32)
    buf, offsets, wq = _phase_planes(x, kh, kw, sh, sw, ph, pw)
    # The kernel does no bounds checks: the farthest read must lie inside each sample's buffer.
    if offsets.size and int(offsets.max()) + oh * wq > buf.shape[1]:
        raise AssertionError("sparse conv buffer too short")  # a bug here, never the caller's
    y = np.empty((n, out_c, oh, ow), dtype=np.float32)
    if n:
        _direct_conv(packed.row_ptr, packed.cols, packed.values, offsets, buf, bias, wq, y)
    return torch.from_numpy(y) if as_torch else y


def conv2d_settings(kernel_size, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """nn.Conv2d's settings as the (stride, padding) (h, w) int pairs `conv2d` takes.

    `padding` is an int, a pair, "valid" (none) or "same" for stride 1 and odd kernel sizes
    (then (k - 1) / 2 on each side; with an even kernel torch pads one side more, which
    `conv2d` cannot). Raises ConfigError naming what the direct sparse conv cannot
    compute: groups other than 1 (grouped and depthwise convolutions), dilation other
    than 1, a padding_mode other than "zeros", or a bad stride, padding or kernel size.
    """
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    if groups != 1:
        raise ConfigError(f"SparseConv2d needs groups=1 (grouped and depthwise convolutions stay dense), got groups={groups!r}")
    if _pair(dilation, "dilation", 1) != (1, 1):
        raise ConfigError(f"SparseConv2d needs dilation 1, got dilation={dilation!r}")
    if padding_mode != "zeros":
        raise ConfigError(f"SparseConv2d needs padding_mode='zeros', got {padding_mode!r}")
    stride = _pair(stride, "stride", 1)
    if not isinstance(padding, str):
        return stride, _pair(padding, "padding", 0)
    if padding == "valid":
        return stride, (0, 0)
    if padding != "same":
        raise ConfigError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    if stride != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
        raise ConfigError(f"SparseConv2d computes padding='same' for stride 1 and odd kernel sizes only, got stride {stride}, kernel {kh}x{kw}")
    return stride, ((kh - 1) // 2, (kw - 1) // 2)


class SparseConv2d(nn.Module):
    """An inference-only nn.Conv2d whose weight stays pruned: the direct sparse convolution.

    Built from a 4-D `CodebookTensor` weight (out, in, kh, kw), an optional bias of shape
    (out,), and nn.Conv2d's stride and padding; dilation, groups and padding_mode are
    taken only to refuse what `conv2d` cannot compute (see `conv2d_settings`). `forward`
    takes a CPU tensor (N, in, H, W) or (in, H, W) in float32, float16 or bfloat16 and
    returns the convolution in the same dtype: the input is widened to float32 (exactly),
    each output accumulated in float32 and rounded to the input's dtype once, at the end.
    It runs on `torch.get_num_threads()` numba threads.

    The weights are exactly the values `CodebookTensor.to_dense` decodes to (a
    float16/bfloat16 record's rounding and per-channel scales included), held as float32
    CSR per output channel, zeros dropped. It has no autograd: an input that requires grad
    while grad mode is on raises ConfigError (use torch.no_grad() / torch.inference_mode()).
    The bias is a buffer, not a Parameter, and there is no `.weight`.
    """

    def __init__(self, weight: CodebookTensor, bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        super().__init__()
        if not isinstance(weight, CodebookTensor) or len(weight.shape) != 4 or min(weight.shape) < 1:
            got = f"shape {tuple(weight.shape)}" if isinstance(weight, CodebookTensor) else type(weight).__name__
            raise ConfigError(f"SparseConv2d needs a non-empty 4-D (out, in, kh, kw) CodebookTensor weight, got {got}")
        self.out_channels, self.in_channels, kh, kw = (int(d) for d in weight.shape)
        self.kernel_size = (kh, kw)
        self.stride, self.padding = conv2d_settings(self.kernel_size, stride, padding, dilation, groups, padding_mode)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or tuple(bias.shape) != (self.out_channels,):
                got = f"{bias.dtype} {tuple(bias.shape)}" if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise ConfigError(f"SparseConv2d bias must be a float tensor of shape ({self.out_channels},), got {got}")
            bias = bias.detach().to(device="cpu", dtype=torch.float32).contiguous()
        self.register_buffer("bias", bias)
        # Packed from the decoded dense weight, so the values are to_dense()'s bit for bit
        # (rounded to the record's dtype, scales applied). Conv weights are small enough to
        # build densely once (VGG-16's largest, 512x512x3x3, is 9.4 MB in float32).
        self.packed = pack_conv(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in, H, W) or (in, H, W) float32/float16/bfloat16 -> the convolution, in x's dtype."""
        c = self.in_channels
        check_input(x, "SparseConv2d", lambda: x.ndim in (3, 4) and x.shape[-3] == c, f"(N, {c}, H, W) or ({c}, H, W)")
        x4 = (x if x.ndim == 4 else x.unsqueeze(0)).detach()
        if x.dtype != torch.float32:
            x4 = x4.to(torch.float32)  # exact for float16/bfloat16
        kernels.use_threads(torch.get_num_threads())
        y = conv2d(self.packed, x4, self._buffers["bias"], self.stride, self.padding)  # bias widened there
        if x.ndim == 3:
            y = y[0]
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        """Channels, kernel size, stride, padding, kept fraction of the weights, bias."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, kept={100 * self.packed.density:.2f}%, bias={self.bias is not None}"
        )


def _phase_planes(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int):
    """Zero-pad x once and split it into sh*sw phase planes of Hq x Wq, one flat buffer per sample.

    Returns (buf float32 (N, in*sh*sw*Hq*Wq + tail), offsets uint64 [in*kh*kw], Wq):
    weight (ic, ky, kx) reads buf[n, offsets[ic*kh*kw + ky*kw + kx] + y*Wq + x] for output
    (y, x). The tail of (kw-1)//sw + 1 zeros covers the junk columns of the last plane.
    """
    n, c, h, w = x.shape
    hq, wq = -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)
    plane = hq * wq
    buf = np.zeros((n, c * sh * sw * plane + (kw - 1) // sw + 1), dtype=np.float32)
    if sh == sw == 1:
        buf[:, : c * plane].reshape(n, c, hq, wq)[:, :, ph : ph + h, pw : pw + w] = x
    else:
        padded = np.zeros((n, c, hq * sh, wq * sw), dtype=np.float32)
        padded[:, :, ph : ph + h, pw : pw + w] = x
        phases = buf[:, : c * sh * sw * plane].reshape(n, c, sh, sw, hq, wq)
        phases[...] = padded.reshape(n, c, hq, sh, wq, sw).transpose(0, 1, 3, 5, 2, 4)
    ic = np.arange(c).reshape(c, 1, 1)
    ky = np.arange(kh).reshape(1, kh, 1)
    kx = np.arange(kw).reshape(1, 1, kw)
    offsets = ((ic * sh + ky % sh) * sw + kx % sw) * plane + (ky // sh) * wq + kx // sw
    return buf, np.ascontiguousarray(offsets.reshape(-1), dtype=np.uint64), wq


# Only contraction: each acc += w * x becomes one FMA. The loop over output pixels
# vectorizes without reassociation (its iterations are independent).
@njit(parallel=True, cache=True, fastmath={"contract"})
def _direct_conv(row_ptr, cols, values, offsets, buf, bias, wq, y):
    n, out_c, oh, ow = y.shape
    length = np.uint64(oh * wq)  # the wide output plane
    one = np.uint64(1)
    group = np.uint64(8)  # weights per pass over the plane (see the module docstring)
    for i in prange(n * out_c):
        b = buf[i // out_c]
        o = i % out_c
        acc = np.zeros(length, dtype=np.float32)
        # Unsigned indices throughout: numba then adds no negative-index wraparound.
        j = row_ptr[o]
        stop = row_ptr[o + 1]
        while j + group <= stop:
            w0, w1, w2, w3 = values[j], values[j + one], values[j + np.uint64(2)], values[j + np.uint64(3)]
            w4, w5, w6, w7 = values[j + np.uint64(4)], values[j + np.uint64(5)], values[j + np.uint64(6)], values[j + np.uint64(7)]
            q0, q1 = offsets[cols[j]], offsets[cols[j + one]]
            q2, q3 = offsets[cols[j + np.uint64(2)]], offsets[cols[j + np.uint64(3)]]
            q4, q5 = offsets[cols[j + np.uint64(4)]], offsets[cols[j + np.uint64(5)]]
            q6, q7 = offsets[cols[j + np.uint64(6)]], offsets[cols[j + np.uint64(7)]]
            for t in range(length):
                # One chain into acc[t]: eight FMAs, no reassociation needed to vectorize over t.
                s = acc[t] + w0 * b[q0 + t]
                s = s + w1 * b[q1 + t]
                s = s + w2 * b[q2 + t]
                s = s + w3 * b[q3 + t]
                s = s + w4 * b[q4 + t]
                s = s + w5 * b[q5 + t]
                s = s + w6 * b[q6 + t]
                acc[t] = s + w7 * b[q7 + t]
            j += group
        while j < stop:
            w0 = values[j]
            q0 = offsets[cols[j]]
            for t in range(length):
                acc[t] += w0 * b[q0 + t]
            j += one
        plane = y[i // out_c, o]
        for r in range(oh):
            for c in range(ow):
                plane[r, c] = acc[r * wq + c] + bias[o]
