"""`python -m deepzip.cli`: the `deepzip` command (what torchrun and subprocesses launch)."""

from deepzip.cli import main

main()
