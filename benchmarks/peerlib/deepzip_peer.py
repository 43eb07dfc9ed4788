"""deepzip through its command line: `deepzip compress INPUT -o OUT.dzip ARGS`, then `deepzip.load`.

Each argument set is one string of CLI options (`--bits 6`, `--size 8x --calibration-text
{calibration_text}`); `{name}` placeholders are replaced by the Target's files. The CLI is
the one installed beside this interpreter, so the benchmark measures the library exactly as
a user runs it, including options added after this file was written. An argument set that
the CLI rejects (an option it does not have yet) gives one line and the sweep goes on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

from peerlib.target import Point, Target

DEFAULT_ARGS = ("--bits 5", "--bits 6", "--bits 8")
QUICK_ARGS = ("--bits 6",)


def cli() -> str:
    """The `deepzip` executable beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "deepzip"
    if beside.exists():
        return str(beside)
    found = shutil.which("deepzip")
    if found is None:
        raise SystemExit("no `deepzip` command found: run `make setup`")
    return found


def substitute(args: str, placeholders: dict[str, str]) -> list[str]:
    """Split an argument string like a shell and fill its `{name}` placeholders; KeyError if one is unknown."""
    names = {field for _, field, _, _ in string.Formatter().parse(args) if field}
    unknown = names - set(placeholders)
    if unknown:
        raise KeyError(", ".join(sorted(unknown)))
    return shlex.split(args.format(**{k: shlex.quote(v) for k, v in placeholders.items()}))


def attached_file_bytes(path: Path) -> int | None:
    """Bytes of the .dzip's sections that hold attached files (config, tokenizer...), or None if unknown.

    Read through deepzip's container reader; if its API has moved, the figure is simply left out.
    """
    try:
        from deepzip import container

        source = container.open_file(path)
        return sum(record.size for record in source.header.records if record.name in source.files)
    except Exception:  # noqa: BLE001 - an informational figure only
        return None


def run_point(target: Target, args: str, workdir: Path, index: int) -> Point:
    """Compress the Target with one argument set, decode the file and score it."""

    point = Point(model=target.name, tool="deepzip", settings=args)
    try:
        argv = substitute(args, target.placeholders)
    except KeyError as missing:
        point.error = f"placeholder {{{missing.args[0]}}} is not defined for {target.name}"
        return point
    out = workdir / f"deepzip-{index}.dzip"
    if argv[:1] == ["--api"]:
        return _run_api(point, target, argv[1:], out)
    # "retrain ..." runs `deepzip retrain` (distillation) instead of post-training `compress`.
    verb, argv = ("retrain", argv[1:]) if argv[:1] == ["retrain"] else ("compress", argv)
    command = [cli(), verb, str(target.deepzip_input), "-o", str(out), "--force", *argv]
    start = time.perf_counter()
    # One thread per BLAS/numba pool is what the CLI gets by default too; the env is passed as is.
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    point.seconds["compress"] = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        point.error = f"`deepzip {verb} ... {args}` failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"
        return point
    return _score(point, target, out)


def _run_api(point: Point, target: Target, argv: list[str], out: Path) -> Point:
    """`--api --size S [--calibration FILE]`: the Python API with the Target's own model as the probe.

    For a model the CLI cannot build (a bare state dict with no model class), this is how a
    user calibrates: `compress_to_size(..., probe=OutputDistortion(model, batches))`.
    """
    from deepzip.checkpoints.sized import compress_to_size

    options = dict(zip(argv[::2], argv[1::2], strict=True))
    start = time.perf_counter()
    probe = calibration_probe(target, options["--calibration"]) if "--calibration" in options else None
    compress_to_size(target.deepzip_input, out, options["--size"], probe=probe, overwrite=True)
    point.seconds["compress"] = time.perf_counter() - start
    return _score(point, target, out)


def calibration_probe(target: Target, calibration_file: str):
    """The OutputDistortion of the Target's fp32 model on a safetensors file of input batches.

    The model's forward takes its input positionally, so each batch is its one tensor.
    """
    from deepzip.budget.sensitivity import OutputDistortion
    from deepzip.checkpoints.calibration import tensor_batches

    batches = [next(iter(batch.values())) for batch in tensor_batches(calibration_file)]
    return OutputDistortion(target.build(target.state_dict), batches)


def _score(point: Point, target: Target, out: Path) -> Point:
    """Bytes, ratio and the Target's metrics of the written file `out`."""
    import deepzip

    point.bytes = out.stat().st_size
    point.ratio = target.fp32_bytes / point.bytes
    attached = attached_file_bytes(out)
    if attached:
        point.notes.append(f"includes {attached:,} B of attached config/tokenizer files")
    start = time.perf_counter()
    state_dict = deepzip.load(out)
    model = target.build(state_dict)
    point.seconds["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    point.metrics = target.evaluate(model)
    point.seconds["eval"] = time.perf_counter() - start
    return point
