"""The compression pipeline on an accelerator agrees with the CPU: a pass/fail table.

On LeNet-300-100 with random data, once on the CPU and once on DEVICE: prune_ to 90%,
a few SGD steps (momentum, weight decay), quantize_ to 5 bits, a few steps on the
centroids alone, save, load_into a fresh model. Checked on each device: the masks live
on the model's device, pruned weights stay exactly zero through both trainings, every
codebook of the file decodes to the in-memory quantized weight, the loaded model's logits
equal the in-memory model's (torch.equal). Checked across devices: the same initial
weights give the same masks (pruning is deterministic) and so the same kept fraction.

    python benchmarks/device_check.py [--device cuda:1] [--steps 5]

Without --device it uses cuda, and exits 0 with a note when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import deepzip
from deepzip import container
from deepzip.paper.models import build

SPARSITY, BITS = 0.9, 5


def masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{layer: bool mask} of the pruned weights (the `mask` buffers of the parametrizations)."""
    return {name.split(".parametrizations.")[0]: b for name, b in model.named_buffers() if name.endswith(".mask")}


def sgd_steps(model, parameters, x, y, steps: int) -> None:
    """`steps` SGD steps with momentum and weight decay on (x, y), cross-entropy."""
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def pruned_stay_zero(model, layer_masks) -> bool:
    """Every pruned entry of every masked weight is exactly zero."""
    with torch.no_grad():
        return all(bool((model.get_submodule(n).weight[~m] == 0).all()) for n, m in layer_masks.items())


def pipeline(device: torch.device, steps: int, path: Path) -> tuple[dict[str, bool], dict[str, torch.Tensor], float]:
    """Run the pipeline on `device`, saving to `path`; return (check results, masks on the CPU, kept fraction)."""
    torch.manual_seed(0)  # initialised on the CPU, so both runs start from the same weights
    model = build("lenet-300-100")
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(256, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (256,), generator=generator)
    model, x, y = model.to(device), x.to(device), y.to(device)
    checks: dict[str, bool] = {}

    deepzip.prune_(model, SPARSITY)
    layer_masks = masks(model)
    checks["masks found"] = len(layer_masks) == 3
    checks["masks on the model's device"] = all(m.device == x.device for m in layer_masks.values())
    cpu_masks = {n: m.cpu() for n, m in layer_masks.items()}
    kept = sum(int(m.sum()) for m in cpu_masks.values()) / sum(m.numel() for m in cpu_masks.values())
    sgd_steps(model, [p for p in model.parameters() if p.requires_grad], x, y, steps)
    checks["pruned weights zero after retraining"] = pruned_stay_zero(model, layer_masks)

    deepzip.quantize_(model, BITS)
    centroids = [p for n, p in model.named_parameters() if n.endswith("centroids")]
    checks["centroids found"] = len(centroids) == 3
    before = [c.detach().clone() for c in centroids]
    sgd_steps(model, centroids, x, y, steps)
    checks["centroids trained"] = any(not torch.equal(b, c) for b, c in zip(before, centroids))
    checks["pruned weights zero after fine-tuning"] = pruned_stay_zero(model, masks(model))

    deepzip.save(model, path)
    records = {n: r for n, r in container.read(path).tensors.items() if isinstance(r, deepzip.CodebookTensor)}
    with torch.no_grad():
        expected = {f"{n}.weight": model.get_submodule(n).weight.detach().cpu() for n in layer_masks}
        checks["codebooks decode to the quantized weights"] = set(records) == set(expected) and all(
            len(r.codebook) <= 2**BITS and torch.equal(r.to_dense(), expected[n]) for n, r in records.items()
        )
        logits = model(x)
        fresh = build("lenet-300-100").to(device)
        deepzip.load_into(fresh, path)
        checks["loaded weights on the device"] = all(p.device == x.device for p in fresh.parameters())
        checks["loaded logits equal in-memory logits"] = torch.equal(fresh(x), logits)
    return checks, cpu_masks, kept


def main(argv: list[str] | None = None) -> int:
    """Compare the CPU run with the DEVICE run; print a table; 0 if every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="torch device to check against the CPU (default: cuda)")
    parser.add_argument("--steps", type=int, default=5, help="SGD steps after pruning and after quantization")
    args = parser.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (give --device to check another one)")
        return 0
    device = torch.device(args.device or "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        cpu_checks, cpu_masks, cpu_kept = pipeline(torch.device("cpu"), args.steps, Path(tmp) / "cpu.dzip")
        dev_checks, dev_masks, dev_kept = pipeline(device, args.steps, Path(tmp) / "device.dzip")
    rows = [(name, cpu_checks[name], dev_checks[name]) for name in cpu_checks]
    same_masks = cpu_masks.keys() == dev_masks.keys() and all(torch.equal(cpu_masks[n], dev_masks[n]) for n in cpu_masks)
    rows.append(("same pruned positions as the CPU", True, same_masks))
    rows.append((f"same kept fraction as the CPU ({cpu_kept:.4f})", True, cpu_kept == dev_kept))
    width = max(len(name) for name, _, _ in rows)
    print(f"{'check':<{width}}  {'cpu':>4}  {str(device):>6}")
    for name, on_cpu, on_device in rows:
        print(f"{name:<{width}}  {'ok' if on_cpu else 'FAIL':>4}  {'ok' if on_device else 'FAIL':>6}")
    failed = sum(not ok for _, a, b in rows for ok in (a, b))
    print(f"{'all checks passed' if not failed else f'{failed} check(s) failed'} (kept on {device}: {dev_kept:.4f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
