"""The NNCodec side of one point, run as a script by nncodec_peer.run_point.

Usage: nncodec_worker.py INPUT.safetensors BITSTREAM DECODED.safetensors QP

It runs with benchmarks/peerlib/stubs first on PYTHONPATH, so that `from nncodec import nnc`
finds the stand-in torchvision; it imports nothing from peerlib, so the stub never reaches
the benchmark's own process. It prints one JSON line of timings.
"""

from __future__ import annotations

import json
import sys
import time


def main(source: str, bitstream: str, decoded_path: str, qp: int) -> None:
    """Compress, decompress, save the decoded tensors, print {"compress_s", "decode_s"}."""
    import numpy as np
    from nncodec import nnc
    from safetensors.numpy import load_file, save_file

    params = load_file(source)
    start = time.perf_counter()
    nnc.compress(params, bitstream_path=bitstream, qp=qp, use_dq=True)
    compress_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = nnc.decompress(bitstream)
    decode_s = time.perf_counter() - start
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in decoded.items()}, decoded_path)
    print(json.dumps({"compress_s": compress_s, "decode_s": decode_s}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
