"""A plain training and evaluation loop for in-memory data sets, with progress bars and seeds.

deepzip's compression API does not depend on it: prune_ and quantize_ work under any
training loop. This one exists for `deepzip reproduce` and the examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deepzip.train import distributed


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum (or Adam) and a cosine learning-rate decay over all epochs."""

    epochs: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    optimizer: str = "sgd"  # or "adam" (momentum unused)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation (Hinton, Vinyals, Dean 2015) from a teacher's logits.

    The loss becomes (1 - weight) x cross-entropy + weight x temperature^2 x
    KL(teacher || student), both distributions softened by `temperature`; the T^2 keeps
    the soft term's gradient on the scale of the hard one's.
    """

    weight: float = 0.5
    temperature: float = 4.0


@dataclass(frozen=True)
class Checkpointing:
    """Every `every` optimizer steps, `save(state)` receives the loop's state (see `train`'s `resume`)."""

    every: int
    save: Callable[[dict], None]


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    desc: str = "train",
    parameters: list[nn.Parameter] | None = None,
    checkpointing: Checkpointing | None = None,
    resume: dict | None = None,
    teacher_logits: torch.Tensor | None = None,
    distillation: Distillation | None = None,
    regularizer: Callable[[float], torch.Tensor] | None = None,
) -> None:
    """Train `model` in place with cross-entropy on (images, labels).

    With `teacher_logits` (one row per image, from the uncompressed model) and
    `distillation`, the loss mixes in the teacher's softened outputs (`Distillation`).
    `regularizer(progress)`, with progress the fraction of training done, is added to every
    step's loss (say a KL term, `deepzip.train.variational.kl_divergence`).

    `parameters` defaults to every parameter that requires a gradient; pass the centroids
    alone to fine-tune a quantized model. Batches are drawn from a generator seeded with
    `config.seed`, so a run is repeatable on the same machine.

    Under a process group of several ranks (`torchrun`), every rank draws the same global
    batches and takes its share of each (`deepzip.train.distributed.wrap` averages the
    gradients): each rank's loss is its summed cross-entropy times the world size over the
    global batch size, so the averaged gradient is the global batch's mean, as in one
    process, whatever the split. The progress bar shows on rank 0 only.

    With `checkpointing`, the loop's state (optimizer and schedule state, the batch
    generator's state, this epoch's order and the position in it) is handed over every
    `every` steps; passed back as `resume` to the same call on the same model, training
    continues from there and ends exactly as an uninterrupted run does.
    """
    params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(config.seed)
    ranks, rank = distributed.world_size(), distributed.rank()
    hard_loss = nn.CrossEntropyLoss(reduction="sum" if ranks > 1 else "mean")
    if (teacher_logits is None) != (distillation is None):
        raise ValueError("distillation needs both teacher_logits and a Distillation")

    def loss_fn(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        hard = hard_loss(logits, labels[batch])
        if distillation is None:
            return hard
        t = distillation.temperature
        student, teacher = F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits[batch] / t, dim=1)
        soft = F.kl_div(student, teacher, reduction="sum" if ranks > 1 else "batchmean", log_target=True)
        return (1 - distillation.weight) * hard + distillation.weight * t * t * soft

    wrapped = distributed.wrap(model)
    step, first_epoch, first_start, order = 0, 0, 0, None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        step, first_epoch, first_start, order = resume["step"], resume["epoch"], resume["start"], resume["order"]
    model.train()
    with tqdm(total=total, initial=step, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=rank != 0) as bar:
        for epoch in range(first_epoch, config.epochs):
            if epoch != first_epoch or order is None:
                order = torch.randperm(len(images), generator=generator)
            for start in range(first_start if epoch == first_epoch else 0, len(images), config.batch_size):
                batch = order[start : start + config.batch_size]
                if ranks > 1:
                    share = batch.tensor_split(ranks)[rank]
                    loss = loss_fn(wrapped(images[share]), share) * (ranks / len(batch))
                else:
                    loss = loss_fn(model(images[batch]), batch)
                if regularizer is not None:
                    loss = loss + regularizer(step / total)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                step += 1
                if checkpointing is not None and step % checkpointing.every == 0:
                    checkpointing.save(
                        {
                            "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(),
                            "generator": generator.get_state(),
                            "step": step,
                            "epoch": epoch,
                            "start": start + config.batch_size,
                            "order": order,
                        }
                    )
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", refresh=False)
    model.eval()


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The model's logits for every image (in evaluation mode), batch by batch."""
    model.eval()
    return torch.cat([model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)])


def error_rate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of misclassified examples (top-1)."""
    wrong = int((logits_of(model, images, batch_size).argmax(1) != labels).sum())
    return wrong / len(images)
