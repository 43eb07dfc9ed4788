"""The `deepzip` click group: one line on stderr and a non-zero exit for every error a user can cause."""

from __future__ import annotations

import sys

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
