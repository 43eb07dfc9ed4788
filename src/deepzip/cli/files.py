"""The commands on model files: compress, retrain, decompress, info and report."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import click

from deepzip.cli.group import main
from deepzip.errors import DeepzipError


@main.command()
@click.argument("input_path", metavar="DIRECTORY", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .dzip file to write.")
@click.option("--text", "text", type=click.Path(path_type=Path), required=True, help="Unlabeled text, one input a line, to distil on.")
@click.option("--sparsity", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Fraction of every compressible tensor's weights pruned by magnitude.")
@click.option("--bits", type=click.IntRange(1, 12), default=4, show_default=True, help="k-means codebook of 2**BITS shared weights per tensor.")
@click.option("--size", default=None, help="Quantize the pruned, distilled model to this budget instead of --bits: 8x (the fp32 size over it), 12MB, 11MiB or bytes.")
@click.option("--nproc", type=click.IntRange(1, 64), default=1, show_default=True, help="Processes (ranks) to distil on, launched with torchrun; each distils on its share of the text.")
@click.option("--prune-steps", type=click.IntRange(0), default=300, show_default=True, help="Distillation steps after pruning.")
@click.option("--finetune-steps", type=click.IntRange(0), default=300, show_default=True, help="Distillation steps after quantization (centroids, biases, norms).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True, help="Adam's learning rate.")
@click.option("--max-texts", type=click.IntRange(1), default=None, help="Use at most this many lines of the text.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def retrain(
    input_path: Path, output: Path, text: Path, sparsity: float, bits: int, size: str | None, nproc: int,
    prune_steps: int, finetune_steps: int, lr: float, max_texts: int | None, force: bool,
) -> None:
    """Compress a transformers DIRECTORY with retraining, distilling from the original on unlabeled text.

    Prunes every compressible tensor by magnitude, distils the pruned model to match the
    original's outputs (last hidden states and any other floating outputs, padding left
    out), quantizes with per-tensor k-means, distils again (centroids, biases and norms
    train), and writes the .dzip with the directory's config and tokenizer files.
    With --size, the pruned and distilled model is quantized to that budget instead,
    calibrated on the same text. With --nproc N, N processes distil data-parallel.
    Progress bars show each distillation.
    """
    from deepzip.checkpoints.retrain import retrain as run
    from deepzip.cli.paper import _launch
    from deepzip.train import distributed

    if output.exists() and not force:
        raise DeepzipError(f"{output} exists; pass --force to replace it")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        arguments = ["retrain", str(input_path), "-o", str(output), "--text", str(text), "--sparsity", str(sparsity),
                     "--bits", str(bits), "--prune-steps", str(prune_steps), "--finetune-steps", str(finetune_steps),
                     "--lr", str(lr)]  # fmt: skip
        arguments += ["--size", size] if size is not None else []
        arguments += ["--max-texts", str(max_texts)] if max_texts is not None else []
        arguments += ["--force"] if force else []
        _launch(arguments, nproc)
        return
    distributed.init_from_environment()

    def log(message: str) -> None:
        click.echo(f"deepzip: {message}", err=True)

    written, compressed = run(
        input_path, output, text, sparsity=sparsity, bits=bits, size=size, prune_steps=prune_steps,
        finetune_steps=finetune_steps, lr=lr, max_texts=max_texts, overwrite=force, log=log,
    )  # fmt: skip
    if not distributed.is_writer():
        return
    fp32 = compressed.parameter_bytes()
    click.echo(f"wrote {output}: {written:,} bytes, {fp32 / max(written, 1):.2f}x the fp32 parameters ({fp32:,} bytes)")


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def info(file: Path) -> None:
    """Print the per-layer table of a .dzip FILE, from the file alone (its header, for version 2)."""
    import mmap

    from deepzip.report.tables import format_table

    if not file.is_file():
        raise DeepzipError(f"{file}: no such file")
    with open(file, "rb") as f:
        # Mapped, not read: the header is at the end, and the sections need not be touched.
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if file.stat().st_size else b""
    click.echo(format_table(data))


def _settings(convert, form: str):
    """A click callback for a repeatable `[PATTERN=]VALUE` option.

    Returns None (not given), one value (a bare VALUE: every tensor) or {pattern: value}
    in the order given; a bare VALUE among patterns becomes the last pattern, '*', so it
    applies to the tensors no pattern matches.
    """

    def parse(ctx: click.Context, param: click.Parameter, texts: tuple[str, ...]):
        if not texts:
            return None
        mapping, single = {}, None
        for text in texts:
            # rpartition: the value never holds '=', a pattern could.
            pattern, equals, raw = text.rpartition("=")
            try:
                value = convert(raw.strip())
            except ValueError as error:
                raise click.BadParameter(f"{text!r}: {error}, given as {form}") from None
            if not equals:
                if single is not None:
                    raise click.BadParameter(f"{text!r}: give at most one value without a PATTERN=")
                single = value
            elif not pattern.strip():
                raise click.BadParameter(f"{text!r}: empty pattern before '='")
            elif pattern in mapping:
                raise click.BadParameter(f"{text!r}: pattern {pattern!r} given twice")
            else:
                mapping[pattern] = value
        if not mapping:
            return single
        if single is not None:
            if "*" in mapping:
                raise click.BadParameter("a value without a pattern means '*=...', and '*' is given too")
            mapping["*"] = single
        return mapping

    return parse


def _in_range(text: str, convert, low, high, message: str):
    """`convert(text)` if it lies in [low, high] (nan never does), else ValueError(message)."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(message)
    return value


def _sparsity(text: str) -> float:
    return _in_range(text, float, 0.0, 1.0, "sparsity must be a number in [0, 1]")


def _bits(text: str) -> int:
    from deepzip.limits import MAX_BITS

    return _in_range(text, int, 1, MAX_BITS, f"bits must be an integer in 1..{MAX_BITS}")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The .dzip file to write.")
@click.option("--recipe", default=None, metavar="NAME_OR_FILE", help="A shipped recipe's name or a recipe YAML file.")
@click.option(
    "--sparsity",
    multiple=True,
    metavar="[PATTERN=]X",
    callback=_settings(_sparsity, "X or PATTERN=X"),
    help="Fraction of weights to prune, for every tensor or for those PATTERN matches (repeatable; default 0).",
)
@click.option(
    "--bits",
    multiple=True,
    metavar="[PATTERN=]N",
    callback=_settings(_bits, "N or PATTERN=N"),
    help="Shared-weight codebook of 2**N values, for every tensor or for those PATTERN matches (repeatable; default 8).",
)
@click.option("--include", multiple=True, metavar="PATTERN", help="Compress only tensors matching a PATTERN (repeatable).")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Store tensors matching a PATTERN raw (repeatable).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Processes compressing tensors in parallel (the file's bytes do not depend on it).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--size", "size", default=None, metavar="SIZE", help="Best fidelity in a file of at most SIZE: a ratio to the fp32 parameters (8x) or bytes (12MB, 11MiB).")
@click.option("--bits-per-weight", type=float, default=None, help="As --size, the file's bytes counted in bits per parameter (e.g. 3.5).")
@click.option("--calibration-text", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --size: a text a line, through the model's tokenizer, to measure each tensor's sensitivity (transformers directories).")
@click.option("--calibration", "calibration_inputs", type=click.Path(path_type=Path, dir_okay=False), default=None, help="With --size: a .safetensors of input batches the model's forward takes as keyword arguments.")
def compress(
    input_path: Path, output: Path, recipe: str | None, sparsity, bits, include, exclude, jobs: int, force: bool,
    size: str | None, bits_per_weight: float | None, calibration_text: Path | None, calibration_inputs: Path | None,
) -> None:  # fmt: skip
    """Compress a trained model post-training (prune + share weights, no retraining) to a .dzip file.

    INPUT is a .safetensors file, a torch state dict (.pt, .pth, .bin, .ckpt) or a
    transformers model directory (sharded or not), whose config and tokenizer files
    travel in the .dzip. Tensors are read and compressed one at a time.
    Patterns are fnmatch-style tensor or layer names (`encoder.*.dense`); explicit
    --sparsity/--bits win over the recipe. Prints what became of every tensor (and why a
    tensor was left raw), then the per-tensor byte table of the written file.

    With --size (or --bits-per-weight) deepzip chooses each tensor's quantizer step so the
    file on disk fits the budget at the least distortion, every weight kept; calibration
    data, where given, weights each tensor by its measured effect on the model's outputs
    and rounds Linear and Conv2d weights with error compensation on the calibration
    inputs (data-free otherwise).
    """
    import math

    from tqdm import tqdm

    from deepzip.checkpoints import open_checkpoint
    from deepzip.checkpoints.compress import compress_file, settings
    from deepzip.report.tables import format_table

    # Checked before the work, not after minutes of compression.
    if output.exists() and not force:
        raise DeepzipError(f"{output} exists; pass --force to replace it")
    budgeted = size is not None or bits_per_weight is not None
    if budgeted and (recipe or sparsity or bits or include or exclude):
        raise click.UsageError("--size / --bits-per-weight choose every setting; drop --recipe, --sparsity, --bits, --include and --exclude")
    if not budgeted and (calibration_text or calibration_inputs):
        raise click.UsageError("--calibration-text and --calibration go with --size or --bits-per-weight")
    if size is not None and bits_per_weight is not None:
        raise click.UsageError("give one of --size and --bits-per-weight")
    if calibration_text and calibration_inputs:
        raise click.UsageError("give one of --calibration-text and --calibration")
    merged = None if budgeted else settings(recipe, sparsity, bits, include=list(include) or None, exclude=exclude)
    with open_checkpoint(input_path) as source:
        skipped = dict(source.skipped)
        distinct = {source.ties.get(name, name) for name in source.names}
        metas = [source.meta(name) for name in sorted(distinct)]
    if skipped:
        shown = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        click.echo(f"deepzip: note: not carried into {output}: {shown}", err=True)
    # disable=None: the bar shows on a terminal only, never in logs or pipes.
    with tqdm(total=len(distinct), unit="tensor", file=sys.stderr, leave=False, disable=None) as bar:

        def progress(name: str) -> None:
            bar.update(1)
            bar.set_postfix_str(name)

        if budgeted:
            written, summary = _compress_to_size(input_path, output, size, bits_per_weight, calibration_text, calibration_inputs, force, bar)
        else:
            written, summary = compress_file(input_path, output, merged, jobs=jobs, overwrite=force, progress=progress)
    size = written
    click.echo(summary.format())
    click.echo("")
    with open(output, "rb") as f:
        click.echo(format_table(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)))
    dense = sum(4 * math.prod(shape) for _, shape in metas)
    line = f"{input_path}: {dense:,} bytes fp32 -> {size:,} bytes ({dense / size:.1f}x)"
    stored = sum(dtype.itemsize * math.prod(shape) for dtype, shape in metas)
    if stored != dense:  # fp16/bf16 input: also give the ratio to what it really took
        line += f"; {stored:,} bytes in the input's dtypes ({stored / size:.1f}x)"
    click.echo(line)


def _compress_to_size(input_path, output, size, bits_per_weight, text, inputs, force, bar):
    """`compress --size`: calibrate (if asked), allocate, write; print the choice per tensor."""
    from deepzip.checkpoints.sized import compress_to_size

    probe = None
    if text or inputs:
        from deepzip.checkpoints.calibration import transformers_probe

        click.echo("deepzip: loading the model for calibration", err=True)
        probe = transformers_probe(input_path, text, inputs)

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        if what.startswith("curve "):
            bar.update(1)

    def log(message: str) -> None:
        click.echo(f"deepzip: {message}", err=True)

    written, summary, allocation = compress_to_size(
        input_path, output, size, bits_per_weight=bits_per_weight, probe=probe, overwrite=force, progress=progress, log=log
    )
    bar.close()
    kind = "calibrated" if probe is not None else "data-free"
    click.echo(f"budget {allocation.budget:,} bytes ({kind}), met in {allocation.tries} writing(s); per tensor:")
    for name in sorted(allocation.steps):
        axis = allocation.scale_axes.get(name)
        scaled = "" if axis is None else f", scaled along axis {axis}"
        compensated = ", error-compensated" if name in allocation.compensated else ""
        click.echo(
            f"  {name:<60} step {allocation.steps[name]:.4g}  ~{allocation.nbytes[name]:>10,} B  "
            f"sensitivity {allocation.sensitivity[name]:.3g}{scaled}{compensated}"
        )
    return written, summary


def _size_option(ctx: click.Context, param: click.Parameter, text: str | None) -> int | None:
    if text is None:
        return None
    from deepzip.budget.sizes import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as error:
        raise click.BadParameter(f"{text!r}: {error}") from None


@main.command()
@click.argument("input_path", metavar="IN.dzip", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="A .safetensors file or a directory.")
@click.option("--shard-size", default="5GB", show_default=True, callback=_size_option, help="Largest safetensors shard of a directory (e.g. 2GB).")
@click.option(
    "--max-decoded-size",
    default="64GiB",
    show_default=True,
    callback=_size_option,
    help="Refuse a file that would decode to more than this (a small file can declare a huge tensor).",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT's files if they exist.")
def decompress(input_path: Path, output: Path, shard_size: int, max_decoded_size: int, force: bool) -> None:
    """Decode a .dzip file to dense tensors: a .safetensors file or a transformers directory.

    A model with attached files (config.json, tokenizer...) becomes a directory that
    `from_pretrained` loads, unless OUTPUT ends in .safetensors; a large model is written
    in shards with an index. Tensors keep their dtypes and are decoded one at a time.
    """
    from deepzip.container import header
    from deepzip.limits import MIN_SHARD_BYTES

    if shard_size < MIN_SHARD_BYTES:
        raise click.BadParameter(f"{shard_size:,} bytes: shards must be at least {MIN_SHARD_BYTES:,} bytes", param_hint="--shard-size")
    if not input_path.is_file():
        raise DeepzipError(f"{input_path}: no such file")
    with open(input_path, "rb") as f:
        # The header first, with struct alone: a bomb or a damaged file is refused at once,
        # before torch is even imported.
        header.parse(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if input_path.stat().st_size else b"", max_decoded_size)

    from deepzip import container
    from deepzip.checkpoints.write import target_kind, write_checkpoint

    source = container.open_file(input_path, max_decoded_size)
    kind = target_kind(source, output)
    written = write_checkpoint(source, output, kind, shard_bytes=shard_size, overwrite=force)
    for path in written:
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    if kind == "safetensors" and source.files:
        names = ", ".join(sorted(source.files))
        click.echo(f"deepzip: note: attached files not written ({names}); give a directory to restore them", err=True)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory for report.md and its PNG figures.")
def report(file: Path, output: Path) -> None:
    """Write plots and a Markdown summary of a .dzip FILE (from the file alone)."""
    from deepzip.report import write_report

    if not file.is_file():
        raise DeepzipError(f"{file}: no such file")
    click.echo(f"wrote {write_report(file, output)}")
