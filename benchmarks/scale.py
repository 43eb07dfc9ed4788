"""Post-training compression at VGG-16 scale (138 M parameters): time and peak memory.

Random weights with VGG-16's shapes (torchvision keys) are compressed with the shipped
`vgg16` recipe (the paper's per-layer kept fractions and bits), written to a .dzip, then
loaded back dense and sparse. Each phase runs in a fresh process, so each peak RSS is its
own. Random weights are fine for timing; their compression ratio is not the paper's
(trained weights have skewed codes that Huffman coding exploits).

    python benchmarks/scale.py [--json results.json] [--workdir DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

VGG16_SHAPES = {
    **{
        f"features.{i}": (out, inp, 3, 3)
        for i, (inp, out) in zip(
            (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
            ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)),
        )
    },
    "classifier.0": (4096, 25088),
    "classifier.3": (4096, 4096),
    "classifier.6": (1000, 4096),
}  # fmt: skip


def random_vgg16_state_dict():
    """fp32 tensors with VGG-16's shapes, drawn like a trained net's (normal, He scale)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = {}
    for layer, shape in VGG16_SHAPES.items():
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        state[f"{layer}.weight"] = torch.randn(shape, generator=generator).mul_((2.0 / fan_in) ** 0.5)
        state[f"{layer}.bias"] = torch.randn(shape[0], generator=generator) * 0.01
    return state


def phase_compress(path: str) -> dict:
    """Generate, compress with the vgg16 recipe, write; returns timings."""
    import torch

    from deepzip import container
    from deepzip.train.post_training import compress_state_dict
    from deepzip.train.recipe import load_recipe

    torch.set_num_threads(2)
    state = random_vgg16_state_dict()
    recipe = load_recipe("vgg16")
    started = time.perf_counter()
    compressed = compress_state_dict(state, recipe.setting("sparsity"), recipe.setting("bits"))
    encode_started = time.perf_counter()
    size = container.write(compressed, path, overwrite=True)
    done = time.perf_counter()
    params = sum(t.numel() for t in state.values())
    return {
        "parameters": params,
        "fp32_bytes": 4 * params,
        "file_bytes": size,
        "ratio": 4 * params / size,
        "prune_and_quantize_s": encode_started - started,
        "encode_and_write_s": done - encode_started,
        "compress_s": done - started,
    }


def phase_load_dense(path: str) -> dict:
    """Read the file and decode every tensor to a dense state dict."""
    from deepzip.train.export import load

    started = time.perf_counter()
    state = load(path)
    return {"load_dense_s": time.perf_counter() - started, "tensors": len(state)}


def phase_load_sparse(path: str) -> dict:
    """Read the file into inference modules: fc layers sparse, the rest dense."""
    from deepzip import container
    from deepzip.compressed import CodebookTensor

    try:
        from deepzip.runtime.load import SparseLinear
    except ImportError:
        return {"load_sparse_s": None}
    started = time.perf_counter()
    compressed = container.read(path)
    modules = {}
    for name, record in compressed.tensors.items():
        if isinstance(record, CodebookTensor) and len(record.shape) == 2:
            layer = name[: -len(".weight")]
            bias = compressed.tensors.get(f"{layer}.bias")
            modules[layer] = SparseLinear(record, None if bias is None else bias.to_dense())
        else:
            modules[name] = record.to_dense()
    return {"load_sparse_s": time.perf_counter() - started, "sparse_layers": sum(isinstance(m, SparseLinear) for m in modules.values())}


PHASES = {"compress": phase_compress, "load_dense": phase_load_dense, "load_sparse": phase_load_sparse}


def run_phase(name: str, path: str) -> dict:
    """Run one phase in a fresh interpreter and add its peak RSS."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[3]); import scale; "
        "result = scale.PHASES[sys.argv[1]](sys.argv[2]); "
        "result['peak_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; "
        "print(json.dumps(result))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, name, path, str(Path(__file__).parent)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@click.command()
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results here.")
@click.option("--workdir", type=click.Path(), default=None, help="Where to write the .dzip (default: a temp dir).")
def main(json_path: str | None, workdir: str | None) -> None:
    """Time VGG-16-scale compression and loading; report peak RSS of each phase."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = str(Path(tmp) / "vgg16.dzip")
        results = {}
        for name in PHASES:
            click.echo(f"running {name} ...", err=True)
            results[name] = run_phase(name, path)
    fp32 = results["compress"]["fp32_bytes"]
    click.echo(f"VGG-16 shapes: {results['compress']['parameters']:,} parameters, {fp32 / 1e9:.3f} GB fp32")
    click.echo(f"file: {results['compress']['file_bytes']:,} bytes, ratio {results['compress']['ratio']:.1f}x (random weights)")
    rows = [
        ("compress (prune + quantize + encode + write)", results["compress"]["compress_s"], results["compress"]["peak_rss_bytes"]),
        ("load dense (read + decode all tensors)", results["load_dense"]["load_dense_s"], results["load_dense"]["peak_rss_bytes"]),
        ("load sparse (fc layers as SparseLinear)", results["load_sparse"]["load_sparse_s"], results["load_sparse"]["peak_rss_bytes"]),
    ]
    click.echo(f"{'phase':46} {'seconds':>8} {'peak RSS':>10} {'RSS / fp32':>10}")
    for label, seconds, rss in rows:
        shown = "n/a" if seconds is None else f"{seconds:.2f}"
        click.echo(f"{label:46} {shown:>8} {rss / 1e9:>8.2f}GB {rss / fp32:>9.2f}x")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
