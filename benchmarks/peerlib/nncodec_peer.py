"""NNCodec 2.1.3 (Fraunhofer HHI's MPEG-7 NNC codec, DeepCABAC) as a peer.

`nncodec.nnc.compress({name: float32 ndarray}, bitstream_path=..., qp=..., use_dq=True)`
writes a bitstream; `nncodec.nnc.decompress(path)` returns {name: ndarray}. NNCodec's
package imports torchvision (for its dataset and training helpers) and the real one fails
to import beside this torch, so each point runs in a subprocess (nncodec_worker.py) whose sys.path
starts with benchmarks/peerlib/stubs (a stand-in torchvision): the benchmark's own process
never sees the stub.

Size: the bitstream's bytes on disk, plus the raw bytes of every tensor NNCodec was not
given (it takes float32/int32 arrays only; the int64 buffers - MiniLM's position_ids,
EfficientNet's num_batches_tracked - are counted at numel x 8 bytes, as stored). NNCodec
codes 1-D tensors (biases, norms) at its finer `nonweight_qp` (default -75) by itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from peerlib.target import Point, Target, raw_bytes

STUBS = Path(__file__).resolve().parent / "stubs"
WORKER = Path(__file__).resolve().parent / "nncodec_worker.py"
# qp sets the quantiser step (2 ** (qp / 4) with the default qp_density=2: 4 qp halve it).
# Each model's list spans its fidelity range of interest, measured: MiniLM reaches mean cosine
# 0.99..0.9995 within -26..-40, EfficientNet-Lite0 (far more sensitive on these photos) needs
# steps about 16x finer for 99% top-1 agreement.
DEFAULT_QPS = {"minilm": (-26, -30, -32, -34, -36, -38, -40), "efficientnet": (-30, -34, -38, -42, -46, -50, -54)}
QUICK_QPS = {"minilm": (-30, -34, -38), "efficientnet": (-34, -42, -50)}


def split_tensors(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """({name: float32 tensor} for NNCodec, {name: tensor} it leaves out)."""
    coded = {k: v for k, v in state_dict.items() if v.dtype == torch.float32}
    left = {k: v for k, v in state_dict.items() if k not in coded}
    return coded, left


def run_point(target: Target, qp: int, workdir: Path) -> Point:
    """Code the Target's float tensors at one qp in a subprocess, then decode and score them."""
    from safetensors.torch import load_file, save_file

    point = Point(model=target.name, tool="nncodec", settings=f"qp={qp} use_dq")
    coded, left = split_tensors(target.state_dict)
    source = workdir / f"nncodec-{target.name}-input.safetensors"
    if not source.exists():
        save_file({k: v.contiguous() for k, v in coded.items()}, str(source))
    bitstream = workdir / f"nncodec-{target.name}-qp{qp}.nnc"
    decoded_path = workdir / f"nncodec-{target.name}-qp{qp}-decoded.safetensors"
    command = [sys.executable, str(WORKER), str(source), str(bitstream), str(decoded_path), str(qp)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STUBS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        point.error = f"NNCodec qp={qp} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"
        return point
    report = json.loads(done.stdout.strip().splitlines()[-1])
    point.seconds.update(compress=report["compress_s"], decode=report["decode_s"])
    left_bytes = sum(raw_bytes(t) for t in left.values())
    point.bytes = bitstream.stat().st_size + left_bytes
    point.ratio = target.fp32_bytes / point.bytes
    if left:
        point.notes.append(f"+{left_bytes:,} B raw for {len(left)} non-float tensor(s) NNCodec does not take")
    decoded = load_file(str(decoded_path))
    lost = set(coded) - set(decoded)
    if lost:
        point.error = f"NNCodec qp={qp} did not return {len(lost)} tensor(s), e.g. {min(lost)}"
        return point
    state_dict = {**left, **{k: decoded[k].reshape(coded[k].shape) for k in coded}}
    start = time.perf_counter()
    point.metrics = target.evaluate(target.build(state_dict))
    point.seconds["eval"] = time.perf_counter() - start
    for path in (bitstream, decoded_path):
        path.unlink()
    return point
