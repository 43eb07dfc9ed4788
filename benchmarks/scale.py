"""deepzip at scale: time and peak memory of whole checkpoints, each phase in a fresh process.

Three modes (the last two can run together):

    python benchmarks/scale.py [--json results.json] [--workdir DIR]
    python benchmarks/scale.py --params 3e9 --dtype fp16 --shards 3 [--jobs 1,2] [--dir DIR] [--json r.json]
    python benchmarks/scale.py --raw-4gib [--dir DIR] [--json r.json]

VGG-16 (no --params, no --raw-4gib): random weights with VGG-16's shapes (torchvision keys,
138 M parameters) are compressed in-process with the shipped `vgg16` recipe (the paper's
per-layer kept fractions and bits), written to a .dzip, then loaded back dense and sparse.
Random weights are fine for timing; their compression ratio is not the paper's (trained
weights have skewed codes that Huffman coding exploits).

--params: a Llama-shaped transformers directory (hidden 4096, 32 heads, vocab 65536,
untied lm_head, as many layers as bring the total closest to --params; 3e9 gives 12
layers and 2.97 G parameters, its embedding one tensor of 268 M elements), sharded
safetensors with their index, random N(0, 0.02) values; built once and cached under --dir
(scale_checkpoint.py). Then for each --jobs value: `deepzip compress DIR -o OUT.dzip --bits 4
--jobs J`, `deepzip decompress OUT.dzip -o OUTDIR --force --shard-size 2GB`, and a check in
its own process that transformers loads OUTDIR and that its tensors have the right names,
shapes, dtypes and at most 16 distinct values (on a sample of rows). Each command runs under
`/usr/bin/time -v` while its process tree's RSS is sampled (scale_measure.py explains both).

--raw-4gib: one fp32 tensor of 1.1e9 elements (4.4 GB, past 4 GiB) in a safetensors file,
`deepzip compress FILE -o OUT.dzip --exclude '*'` (stored raw), `deepzip decompress OUT.dzip
-o BACK.safetensors`, and the two tensors' bytes compared by sha256, 64 MB at a time.

Progress goes to stderr (each phase as it starts, with the elapsed time); the Markdown
tables to stdout. A phase that exits non-zero stops the run with one FAILED line and the last
lines of its stderr (the JSON then holds what was measured so far). Outputs go to
--dir/out/ and are removed at the end unless --keep-outputs; the built inputs stay cached.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from scale_checkpoint import (
    DTYPES,
    FORMAT_VERSION,
    build_llama,
    build_raw,
    ensure_built,
    file_sha256,
    plan_llama,
    tensor_digest,
)
from scale_measure import (
    PHASE_HEADER,
    PhaseFailed,
    Progress,
    available_memory,
    check_disk,
    gb,
    phase_row,
    run_measured,
)

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
    from deepzip.runtime.load import load

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
    """Run one VGG-16 phase in a fresh interpreter and add its peak RSS."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[3]); import scale; "
        "result = scale.PHASES[sys.argv[1]](sys.argv[2]); "
        "result['peak_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; "
        "print(json.dumps(result))"
    )
    out = subprocess.run([sys.executable, "-c", code, name, path, str(Path(__file__).parent)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise PhaseFailed(name, f"exited with status {out.returncode}", [line for line in out.stderr.splitlines() if line.strip()][-8:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_vgg16(workdir: str | None, log: Progress) -> dict:
    """The VGG-16 mode: three phases, then its table; returns the phases' results."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = str(Path(tmp) / "vgg16.dzip")
        results = {}
        for name in PHASES:
            log(f"running {name} ...")
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
    return results


def clear(*paths: Path) -> None:
    """Remove files or directories left by an earlier run (so no stale shard is read)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def run_checkpoint(spec, jobs_list, bits, shard_size, work: Path, deepzip, log, result: dict, max_rss: int | None) -> None:
    """The --params mode: build (cached), then compress / decompress / verify per --jobs value.

    Fills `result` as it goes, so a failure leaves what was measured."""
    source = work / f"llama-L{spec.num_hidden_layers}-h{spec.hidden_size}-{spec.dtype}-{spec.shards}shards"
    params, size = spec.parameters(), DTYPES[spec.dtype][2]
    result.update(spec=spec.manifest(), parameters=params, input_bytes=params * size, source=str(source), runs=[])
    log(f"Llama-shaped checkpoint: {params:,} parameters, {spec.num_hidden_layers} layers, hidden {spec.hidden_size}, {spec.dtype}")
    built = (source.with_name(source.name + ".manifest.json")).is_file()
    check_disk(work, (0 if built else params * size) + params * size + params * bits // 6, "disk")
    ensure_built(source, spec.manifest(), lambda path: build_llama(spec, path, log), log)
    out, logs = work / "out", work / "logs"
    dzip, decoded = out / "llama.dzip", out / "llama-decoded"
    shard_args = ["--shard-size", shard_size] if shard_size else []
    first_sha = None
    try:
        for jobs in jobs_list:
            clear(dzip, decoded)
            out.mkdir(parents=True, exist_ok=True)
            run = {"jobs": jobs}
            result["runs"].append(run)
            argv = [*deepzip, "compress", str(source), "-o", str(dzip), "--bits", str(bits), "--jobs", str(jobs)]
            run["compress"] = run_measured(f"compress --jobs {jobs}", argv, logs, log, max_rss)
            run["file_bytes"] = file_bytes = dzip.stat().st_size
            run["sha256"] = file_sha256(dzip)
            first_sha = first_sha or run["sha256"]
            run.update(ratio_fp32=4 * params / file_bytes, ratio_fp16=2 * params / file_bytes, same_bytes_as_first=run["sha256"] == first_sha)
            argv = [*deepzip, "decompress", str(dzip), "-o", str(decoded), "--force", *shard_args]
            run["decompress"] = run_measured(f"decompress (.dzip of jobs {jobs})", argv, logs, log, max_rss)
            argv = [sys.executable, str(Path(__file__).with_name("scale_checkpoint.py")), "verify", str(source), str(decoded), "--bits", str(bits)]
            run["verify"] = run_measured(f"verify (.dzip of jobs {jobs})", argv, logs, log, max_rss)
            run["verify"].update(json.loads(Path(run["verify"]["stdout"]).read_text().strip().splitlines()[-1]))
    finally:  # the table of the runs that finished, also when a later one failed
        print_checkpoint(spec, source.name, [run for run in result["runs"] if "transformers_load_s" in run.get("verify", {})], bits, shard_args)


def print_checkpoint(spec, name: str, runs: list[dict], bits: int, shard_args: list[str]) -> None:
    """The Markdown tables of the --params mode: one row per phase and jobs, then the files."""
    if not runs:
        return
    params, size = spec.parameters(), DTYPES[spec.dtype][2]
    click.echo(f"\nLlama-shaped checkpoint ({name}): {params:,} parameters, {spec.num_hidden_layers} layers x hidden "
               f"{spec.hidden_size} (intermediate {spec.intermediate_size}, vocab {spec.vocab_size}), {spec.dtype}, {spec.shards} "
               f"shards, {gb(params * size)} ({gb(4 * params)} fp32); --bits {bits}\n")  # fmt: skip
    click.echo(PHASE_HEADER)
    for run in runs:
        click.echo(phase_row(f"compress --bits {bits}", run["jobs"], run["compress"], params, params * size))
        click.echo(phase_row(" ".join(["decompress", *shard_args]), run["jobs"], run["decompress"], params, params * size))
        click.echo(phase_row("verify (from_pretrained + sample)", run["jobs"], run["verify"], None, params * size))
    click.echo("\n| jobs | .dzip bytes | fp32 / file | fp16 / file | same bytes as first | transformers load s | max distinct | max rel. RMS error |\n" + "|---" * 8 + "|")
    for run in runs:
        v = run["verify"]
        click.echo(f"| {run['jobs']} | {run['file_bytes']:,} | {run['ratio_fp32']:.2f}x | {run['ratio_fp16']:.2f}x | "
                   f"{'yes' if run['same_bytes_as_first'] else 'NO'} | {v['transformers_load_s']:.1f} | {v['max_distinct']} | {v['max_relative_rms_error']:.3f} |")  # fmt: skip


def run_raw(elements: int, work: Path, deepzip, log, result: dict, max_rss: int | None) -> None:
    """The --raw-4gib mode: one fp32 tensor through compress --exclude '*' and decompress, bit-exact."""
    elements = elements // 1000 * 1000
    source = work / f"raw-{elements}.safetensors"
    result.update(elements=elements, tensor_bytes=4 * elements, source=str(source))
    built = source.with_name(source.name + ".manifest.json").is_file()
    check_disk(work, (0 if built else 4 * elements) + 2 * 4 * elements, "disk")
    manifest = {"kind": "raw", "format_version": FORMAT_VERSION, "elements": elements, "seed": 0}
    ensure_built(source, manifest, lambda path: build_raw(elements, path, log), log)
    out, logs = work / "out", work / "logs"
    dzip, back = out / "raw.dzip", out / "raw-back.safetensors"
    clear(dzip, back)
    out.mkdir(parents=True, exist_ok=True)
    result["compress"] = run_measured("raw: compress --exclude '*'", [*deepzip, "compress", str(source), "-o", str(dzip), "--exclude", "*"], logs, log, max_rss)
    result["file_bytes"] = dzip.stat().st_size
    result["decompress"] = run_measured("raw: decompress", [*deepzip, "decompress", str(dzip), "-o", str(back)], logs, log, max_rss)
    log("raw: comparing the tensor's bytes (sha256, 64 MB at a time)")
    started = time.perf_counter()
    want, got = tensor_digest(source, "weight"), tensor_digest(back, "weight")
    result.update(compare_s=time.perf_counter() - started, original=want, decoded=got, bit_exact=want == got)
    if want != got:
        raise PhaseFailed("raw: bit-exact comparison", f"the decoded tensor differs: {got} decoded, {want} stored")
    click.echo(f"\nOne fp32 tensor of {elements:,} elements ({4 * elements / 2**30:.2f} GiB); .dzip {result['file_bytes']:,} bytes; "
               f"bit-exact after the round trip (sha256 {got['sha256'][:16]}..., compared in {result['compare_s']:.1f} s)\n")  # fmt: skip
    click.echo(PHASE_HEADER)
    click.echo(phase_row("compress --exclude '*'", "-", result["compress"], elements, 4 * elements))
    click.echo(phase_row("decompress", "-", result["decompress"], elements, 4 * elements))


def default_deepzip() -> list[str]:
    """The deepzip command beside this interpreter (the venv's), else `python -m deepzip.cli`."""
    script = Path(sys.executable).with_name("deepzip")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepzip.cli"]


def parse_jobs(ctx, param, text: str) -> list[int]:
    """'1,2' -> [1, 2]."""
    try:
        jobs = [int(part) for part in text.split(",")]
    except ValueError:
        jobs = []
    if not jobs or min(jobs) < 1:
        raise click.BadParameter(f"{text!r}: give positive integers separated by commas")
    return jobs


@click.command()
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results here.")
@click.option("--workdir", type=click.Path(), default=None, help="VGG-16 mode: where to write the .dzip (default: a temp dir).")
@click.option("--params", type=float, default=None, help="Build a Llama-shaped checkpoint of about this many parameters (e.g. 3e9).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="fp16", show_default=True, help="Its dtype.")
@click.option("--shards", type=click.IntRange(1), default=3, show_default=True, help="Its number of safetensors shards.")
@click.option("--jobs", "jobs_list", default="1,2", show_default=True, callback=parse_jobs, help="`deepzip compress --jobs` values to measure.")
@click.option("--bits", type=click.IntRange(1, 16), default=4, show_default=True, help="`deepzip compress --bits`.")
@click.option("--shard-size", default="2GB", show_default=True, help="`deepzip decompress --shard-size` ('' to leave it out).")
@click.option("--raw-4gib", "raw", is_flag=True, help="Round-trip one fp32 tensor of 1.1e9 elements (> 4 GiB), stored raw.")
@click.option("--raw-elements", type=click.IntRange(1000), default=1_100_000_000, hidden=True, help="Elements of --raw-4gib's tensor.")
@click.option("--dir", "work", type=click.Path(path_type=Path), default=Path(tempfile.gettempdir()) / "deepzip-scale",
              show_default=True, help="--params/--raw-4gib: where built inputs are cached and outputs written.")  # fmt: skip
@click.option("--keep-outputs", is_flag=True, help="Keep the .dzip files and decoded checkpoints under --dir/out.")
@click.option("--max-rss", type=float, default=None, help="Kill a phase whose process tree passes this many GB of anonymous RSS (default: 90% of the memory available at the start; 0: no limit).")
@click.option("--deepzip", "deepzip_cmd", default=None, hidden=True, help="The deepzip command to measure (default: the venv's).")
def main(json_path, workdir, params, dtype, shards, jobs_list, bits, shard_size, raw, raw_elements, work, keep_outputs, max_rss, deepzip_cmd) -> None:
    """Time deepzip on VGG-16 (default), a Llama-shaped sharded checkpoint (--params) or a >4 GiB tensor (--raw-4gib)."""
    log = Progress()
    deepzip = shlex.split(deepzip_cmd) if deepzip_cmd else default_deepzip()
    limit = int(0.9 * available_memory()) if max_rss is None else int(max_rss * 1e9) or None
    try:
        spec = None if params is None else plan_llama(params, dtype, shards)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--params'") from None
    results: dict = {} if params is None and not raw else {"max_rss_limit_bytes": limit}
    try:
        if params is None and not raw:
            results = run_vgg16(workdir, log)
        else:
            clear(work / "logs")  # each phase's stdout, stderr and time -v report, from this run only
        if spec is not None:
            run_checkpoint(spec, jobs_list, bits, shard_size, work, deepzip, log, results.setdefault("checkpoint", {}), limit)
        if raw:
            run_raw(raw_elements, work, deepzip, log, results.setdefault("raw_4gib", {}), limit)
    except (PhaseFailed, OSError, KeyboardInterrupt) as error:
        message = str(error) if isinstance(error, PhaseFailed) else f"FAILED: {type(error).__name__}: {error}".rstrip(": ")
        results["failed"] = message
        click.echo(message, err=True)
    finally:
        if json_path:
            Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        if (params is not None or raw) and not keep_outputs:
            clear(work / "out")
    if "failed" in results:
        sys.exit(1)


if __name__ == "__main__":
    main()
