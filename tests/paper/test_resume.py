"""A killed `reproduce` run, resumed from OUT/checkpoint.pt, writes the very file an uninterrupted run writes."""

import pytest
import torch

from deepzip.errors import ConfigError
from deepzip.paper.reproduce import reproduce
from deepzip.paper.schedules import PruneStep, Recipe
from deepzip.paper.resume import FILE_NAME
from deepzip.paper.training import TrainConfig

# tiny_mnist: 200 training images, 4 steps an epoch at batch 64; 2 epochs a stage.
STAGE = TrainConfig(epochs=2, lr=0.05)
RECIPE = Recipe("lenet-300-100", STAGE, (PruneStep({"*": 0.5}, STAGE), PruneStep({"*": 0.8}, STAGE)), {"*": 4}, TrainConfig(epochs=2, lr=1e-3))


class Killed(Exception):
    pass


def kill_after(monkeypatch, steps):
    """Make the optimizer raise at its `steps`+1-th step, as if the process died there."""
    original = torch.optim.SGD.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > steps:
            raise Killed
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)


@pytest.fixture(scope="module")
def uninterrupted(tiny_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    reproduce("lenet-300-100", out, tiny_mnist, seed=2, log=lambda *a: None, recipe=RECIPE, checkpoint_every=3)
    assert not (out / FILE_NAME).exists()  # a finished run leaves nothing to resume
    return (out / "model.dzip").read_bytes()


# 8 steps a stage: killed inside the baseline, inside a pruning step (mid-epoch and at a
# stage's end) and inside the centroids' fine-tuning.
@pytest.mark.parametrize("killed_at", [5, 13, 16, 29])
def test_a_killed_run_resumes_to_the_same_file(tiny_mnist, tmp_path, monkeypatch, uninterrupted, killed_at):
    kill_after(monkeypatch, killed_at)
    with pytest.raises(Killed):
        reproduce("lenet-300-100", tmp_path, tiny_mnist, seed=2, log=lambda *a: None, recipe=RECIPE, checkpoint_every=3)
    assert (tmp_path / FILE_NAME).is_file() and not (tmp_path / "model.dzip").exists()
    monkeypatch.undo()
    lines = []
    reproduce("lenet-300-100", tmp_path, tiny_mnist, seed=2, log=lines.append, recipe=RECIPE, checkpoint_every=3, resume=True)
    assert any(line.startswith("resume: from stage") for line in lines)
    assert (tmp_path / "model.dzip").read_bytes() == uninterrupted


def test_a_checkpoint_of_another_run_is_refused(tiny_mnist, tmp_path, monkeypatch):
    kill_after(monkeypatch, 10)
    with pytest.raises(Killed):
        reproduce("lenet-300-100", tmp_path, tiny_mnist, seed=2, log=lambda *a: None, recipe=RECIPE)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="another run"):
        reproduce("lenet-300-100", tmp_path, tiny_mnist, seed=3, log=lambda *a: None, recipe=RECIPE, resume=True)


def test_a_damaged_checkpoint_is_one_clear_error(tiny_mnist, tmp_path):
    (tmp_path / FILE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read the checkpoint"):
        reproduce("lenet-300-100", tmp_path, tiny_mnist, seed=2, log=lambda *a: None, recipe=RECIPE, resume=True)
