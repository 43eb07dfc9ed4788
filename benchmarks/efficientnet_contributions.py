"""Which layers of EfficientNet-Lite0 cost the fidelity of a compressed file: one part at a time.

Compresses EfficientNet-Lite0 to a size budget through the Python API, calibrated on the
benchmark's calibration crops (as `benchmarks/peers.py --deepzip "--api --size S
--calibration {calibration_images}"` does), or takes a .dzip you give. Then, on the 324
evaluation crops, it scores the fp32 model with only one part of the weights taken from
the file, the rest left fp32: each kind of tensor (stem, depthwise, 1x1 convolutions, the
classifier, the 1-D tensors) and each block's 1x1 convolutions. The parts' KLs add up to
about the whole file's, so the table says where the bits would buy the most.

    python benchmarks/efficientnet_contributions.py [--size 4.3x] [--dzip FILE] [--workdir DIR]

Needs `make bench-setup` (the model and the photos).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peerlib import classifier  # noqa: E402
from peerlib.deepzip_peer import calibration_probe  # noqa: E402

import deepzip  # noqa: E402
from deepzip.checkpoints.sized import compress_to_size  # noqa: E402


def kind(tensor: torch.Tensor) -> str:
    """The kind of an EfficientNet-Lite0 tensor, from its shape."""
    if tensor.dim() <= 1:
        return "1-D (batch norm, biases)"
    if tensor.dim() == 2:
        return "classifier"
    if tensor.shape[1] == 1:
        return "depthwise"
    return "1x1" if tensor.shape[2] == 1 else "stem"


def block_of(name: str) -> str | None:
    """'block N' for a 1x1 convolution of _blocks.N, 'head' for _conv_head, else None."""
    if name.startswith("_conv_head."):
        return "head"
    if name.startswith("_blocks.") and ("_expand_conv" in name or "_project_conv" in name):
        return f"block {int(name.split('.')[1]):2d}"
    return None


@click.command()
@click.option("--size", default="4.3x", show_default=True, help="Budget for the file (when --dzip is not given).")
@click.option("--dzip", "dzip_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Analyse this EfficientNet-Lite0 .dzip instead of compressing one.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Where the inputs and the file go.")
def main(size: str, dzip_file: str | None, workdir: str | None) -> None:
    """Score EfficientNet-Lite0 with one part of its weights from a compressed file at a time."""
    work = Path(workdir or tempfile.mkdtemp(prefix="deepzip-effnet-"))
    work.mkdir(parents=True, exist_ok=True)
    target = classifier.make_target(work)
    if dzip_file is None:
        start = time.perf_counter()
        probe = calibration_probe(target, target.placeholders["calibration_images"])
        dzip_file = str(work / f"efficientnet-{size}.dzip")
        compress_to_size(target.deepzip_input, dzip_file, size, probe=probe, overwrite=True,
                         progress=lambda step: print(f"\r{step:<60}", end="", flush=True))
        print(f"\rcompressed to {dzip_file} in {time.perf_counter() - start:.0f} s" + " " * 30)
    decoded = deepzip.load(dzip_file)
    nbytes = Path(dzip_file).stat().st_size
    whole = target.evaluate(target.build(decoded))
    print(f"{dzip_file}: {nbytes:,} bytes, {target.fp32_bytes / nbytes:.2f}x; whole file: "
          f"top-1 agreement {whole['top1_agree']:.2%}, mean KL {whole['mean_kl']:.5f}")
    parts: dict[str, list[str]] = {}
    for name, tensor in target.state_dict.items():
        for part in (kind(tensor), block_of(name)):
            if part is not None:
                parts.setdefault(part, []).append(name)
    print(f"{'part from the file':<26} {'weights':>9} {'top-1 agree':>11} {'mean KL':>9}")
    for part, names in parts.items():
        chosen = set(names)
        mixed = {n: decoded[n] if n in chosen else t for n, t in target.state_dict.items()}
        scores = target.evaluate(target.build(mixed))
        count = sum(target.state_dict[n].numel() for n in names)
        print(f"{part:<26} {count:>9,} {scores['top1_agree']:>11.2%} {scores['mean_kl']:>9.5f}")


if __name__ == "__main__":
    main()
