"""OUT/checkpoint.pt: where a `reproduce` run is, so that a killed run continues to the same result.

A run is a sequence of stages (0: the dense baseline; 1..P: the pruning steps, each a
prune and its retraining; P+1: quantization and the centroids' fine-tuning). The file
holds the last stage reached, the model's state dict (masks, codes and centroids with it:
`deepzip.load_state_dict` rebuilds them), what later stages need of earlier ones (the
dense weights and error, the weights before clustering), and, mid-stage, the training
loop's own state (`deepzip.paper.training.train`'s `resume`). It is written atomically by
rank 0 alone, read with `torch.load(weights_only=True)`, and tied to the run by a digest
of the model name, seed, recipe and world size, so a changed run never resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle  # for its error type only: weights_only loading never unpickles code
from dataclasses import asdict
from pathlib import Path

import torch

from deepzip.container.atomic import replace_file
from deepzip.errors import ConfigError
from deepzip.paper.training import Checkpointing
from deepzip.train import distributed

FILE_NAME = "checkpoint.pt"
DEFAULT_EVERY = 2000  # optimizer steps between checkpoints (LeNet-300-100: about 10 s of training on 2 cores)


class RunState:
    """The checkpoint file of one run: `load` where it stood, `save` where it stands."""

    def __init__(self, out: Path, name: str, seed: int, recipe, every: int = DEFAULT_EVERY):
        if every < 1:
            raise ConfigError(f"checkpoints need a positive step count, got {every}")
        self.path = out / FILE_NAME
        self.every = every
        identity = {"model": name, "seed": seed, "recipe": asdict(recipe), "world_size": distributed.world_size()}
        self.identity = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.kept: dict = {}  # what later stages need of earlier ones, saved with every checkpoint

    def load(self) -> dict | None:
        """The saved state of this run ({"stage", "model", "training", "kept"}), or None if there is none.

        ConfigError if the file is unreadable or belongs to another run.
        """
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:  # what torch raises for a bad file
            raise ConfigError(f"{self.path}: cannot read the checkpoint ({error}); remove it to start afresh") from None
        if not isinstance(state, dict) or state.get("identity") != self.identity:
            raise ConfigError(f"{self.path} is from another run (model, seed, recipe or --nproc differ): remove it or use another --out")
        self.kept = dict(state["kept"])
        return state

    def save(self, stage: int, model: torch.nn.Module, training: dict | None = None) -> None:
        """Record that the run is in `stage` (done with it when `training` is None); rank 0 writes."""
        if not distributed.is_writer():
            return
        state = {"identity": self.identity, "stage": stage, "model": model.state_dict(), "training": training, "kept": self.kept}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        replace_file(self.path, write)

    def during(self, stage: int, model: torch.nn.Module) -> Checkpointing:
        """The training loop's checkpointing within `stage`."""
        return Checkpointing(self.every, lambda training: self.save(stage, model, training))

    def finish(self) -> None:
        """The run is complete: nothing to resume."""
        if distributed.is_writer():
            self.path.unlink(missing_ok=True)
