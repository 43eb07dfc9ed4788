"""The `deepzip` command line: reproduce the paper's MNIST results, compress, retrain and inspect models.

Every error a user can cause ends in one line on stderr and a non-zero exit: 2 for usage
errors (click's own), 1 for everything else. `--debug` shows the traceback instead. The
commands live beside this group: `paper` (reproduce, sensitivity) and `files` (compress,
retrain, decompress, info, report).
"""

from deepzip.cli import files, paper  # noqa: F401 - importing them registers their commands on `main`
from deepzip.cli.group import main

__all__ = ["main"]
