"""Two real gloo ranks (torch.multiprocessing, a file store): masks, codes and centroids agree by design.

Each scenario runs in two spawned processes that form a process group; each rank writes
what it saw to a JSON file, and the test compares the ranks with each other and with one
process doing the same work alone.
"""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import deepzip
from deepzip.errors import ConfigError
from deepzip.paper.training import TrainConfig, train
from deepzip.train import distributed

WORLD = 2


def run_ranks(tmp_path: Path, scenario: str) -> list[dict]:
    """Run `scenario` on WORLD spawned ranks; return each rank's JSON result."""
    mp.spawn(_rank_main, args=(str(tmp_path), scenario), nprocs=WORLD, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _rank_main(rank: int, directory: str, scenario: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=WORLD)
    try:
        result = SCENARIOS[scenario](rank, Path(directory))
        (Path(directory) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # no rank tears the group down while another is still in it
    finally:
        dist.destroy_process_group()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))


def data(seed: int, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=g), torch.randint(0, 10, (n,), generator=g)


def sgd_steps(model, wrapped, seed, steps=3):
    x, y = data(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()


def agreement(rank: int, directory: Path) -> dict:
    """Rank-different weights, seeds and data: compression state must still be rank 0's everywhere."""
    model = mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * rank * torch.randn(p.shape))  # each rank would rank magnitudes differently
    seen = {}
    deepzip.prune_(model, 0.6)
    seen["pruned"] = distributed.digests(model)
    distributed.check_agreement(model)
    sgd_steps(model, distributed.wrap(model), seed=rank)
    seen["retrained"] = distributed.digests(model)
    deepzip.quantize_(model, 4, init="random", seed=rank)
    seen["quantized"] = distributed.digests(model)
    sgd_steps(model, distributed.wrap(model), seed=10 + rank)  # centroid gradients all-reduced
    seen["fine-tuned"] = distributed.digests(model)
    distributed.check_agreement(model)
    seen["saved"] = deepzip.save(model, directory / "model.dzip", overwrite=True)
    dist.barrier()
    if rank == 1:
        model[0].parametrizations.weight[-1].mask[0, 0] ^= True  # a perturbed rank
    try:
        distributed.check_agreement(model)
        seen["perturbed"] = None
    except ConfigError as error:
        seen["perturbed"] = str(error)
    return seen


def training(rank: int, directory: Path) -> dict:
    """The paper's training loop on a split global batch, pruned then quantized; rank 0 writes the file."""
    compress_and_train(directory / "ranks.dzip")
    return {}


def compress_and_train(path: Path) -> None:
    model = mlp()
    x, y = data(5, n=250)  # 250 = 3 batches of 64 and one of 58: uneven splits too
    config = TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=3)
    deepzip.prune_(model, 0.5)
    train(model, x, y, config)
    deepzip.quantize_(model, 4)
    train(model, x, y, config, parameters=[p for n, p in model.named_parameters() if n.endswith("centroids")])
    deepzip.save(model, path, overwrite=True)


def sharded(rank: int, directory: Path) -> dict:
    """FSDP2 on CPU: prune_ refuses a sharded model with a message saying what to use."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD,)))
    try:
        deepzip.prune_(model, 0.5)
        return {"error": None}
    except ConfigError as error:
        return {"error": str(error)}


def tiny_recipe():
    from deepzip.paper.schedules import PruneStep, Recipe

    quick = TrainConfig(epochs=1, lr=0.05)
    return Recipe("lenet-300-100", quick, (PruneStep({"*": 0.8}, quick),), {"*": 4}, quick)


def pipeline(rank: int, directory: Path) -> dict:
    """`reproduce` itself under two ranks: rank 0 writes the file and results.json, rank 1 its rank."""
    from deepzip.paper.reproduce import reproduce

    data = Path((directory / "data.txt").read_text())
    return reproduce("lenet-300-100", directory / "ranks", data, seed=3, log=lambda *a: None, recipe=tiny_recipe())


SCENARIOS = {"agreement": agreement, "training": training, "sharded": sharded, "pipeline": pipeline}


def test_every_rank_holds_rank_0s_masks_codes_and_centroids_and_a_perturbed_rank_is_caught(tmp_path):
    ranks = run_ranks(tmp_path, "agreement")
    for stage in ("pruned", "retrained", "quantized", "fine-tuned"):
        assert ranks[0][stage] == ranks[1][stage], stage
        assert ranks[0][stage], stage
    assert ranks[0]["saved"] == (tmp_path / "model.dzip").stat().st_size and ranks[1]["saved"] == 0
    for rank in ranks:
        assert rank["perturbed"] is not None and "rank 1 disagrees" in rank["perturbed"] and "0.weight" in rank["perturbed"]


def test_two_ranks_on_a_split_global_batch_write_the_file_one_process_writes(tmp_path):
    run_ranks(tmp_path, "training")
    compress_and_train(tmp_path / "alone.dzip")
    ranks, alone = deepzip.load(tmp_path / "ranks.dzip"), deepzip.load(tmp_path / "alone.dzip")
    assert ranks.keys() == alone.keys()
    for name in alone:
        # Equal up to the order of floating-point sums (gradients all-reduced across ranks).
        assert torch.allclose(ranks[name], alone[name], rtol=1e-5, atol=1e-6), name
        assert torch.equal(ranks[name] == 0, alone[name] == 0), name  # the same weights pruned


def test_fsdp2_is_refused_with_what_to_use_instead(tmp_path):
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2")
    ranks = run_ranks(tmp_path, "sharded")
    for rank in ranks:
        assert rank["error"] is not None and "FSDP2" in rank["error"] and "DistributedDataParallel" in rank["error"]


def test_without_a_process_group_everything_is_one_process():
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_writer()
    model = mlp()
    assert distributed.wrap(model) is model
    distributed.agree([torch.ones(3)])
    distributed.check_agreement(model)
    assert not distributed.init_from_environment() or os.environ.get("WORLD_SIZE", "1") != "1"


def test_reproduce_on_two_ranks_matches_one_process(tmp_path, tiny_mnist):
    from deepzip.paper.reproduce import reproduce

    (tmp_path / "data.txt").write_text(str(tiny_mnist))
    ranks = run_ranks(tmp_path, "pipeline")
    assert ranks[1] == {"world_size": 2, "rank": 1}
    alone = reproduce("lenet-300-100", tmp_path / "alone", tiny_mnist, seed=3, log=lambda *a: None, recipe=tiny_recipe())
    written = json.loads((tmp_path / "ranks" / "results.json").read_text())
    assert written["world_size"] == 2 and alone["world_size"] == 1
    assert ranks[0]["compressed_error"] == pytest.approx(alone["compressed_error"], abs=0.01)
    assert ranks[0]["file_bytes"] == pytest.approx(alone["file_bytes"], rel=0.01)
    assert not (tmp_path / "ranks" / "rank1").exists()
