"""Markdown tables, per-tool summaries and the JSON of every point."""

from __future__ import annotations

import json
from pathlib import Path

from peerlib.target import Point, Target

TOOLS = ("deepzip", "nncodec", "coremltools")


def point_line(point: Point) -> str:
    """One progress line for a finished point."""
    times = ", ".join(f"{k} {v:.1f} s" for k, v in point.seconds.items())
    if point.error:
        return f"  [{point.tool}] {point.settings}: SKIPPED - {point.error}" + (f" ({times})" if times else "")
    metrics = ", ".join(f"{k} {v:.5f}" for k, v in point.metrics.items())
    kind = " (analytic)" if point.analytic else ""
    return f"  [{point.tool}] {point.settings}: {point.bytes:,} B{kind}, {point.ratio:.2f}x, {metrics} ({times})"


def table(target: Target, points: list[Point]) -> str:
    """The model's markdown table of every successful point, sorted by ratio (highest first)."""
    heads = ["tool", "settings", "bytes", "ratio", *[m.heading for m in target.metrics], "notes"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (2 + len(target.metrics)) + ["---"]) + "|"]
    for p in sorted((p for p in points if not p.error), key=lambda p: -p.ratio):
        size = f"{p.bytes:,}" + (" (analytic)" if p.analytic else "")
        cells = [p.tool, p.settings, size, f"{p.ratio:.2f}x"]
        cells += [format(p.metrics[m.key], m.fmt) for m in target.metrics]
        cells.append("; ".join(p.notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(target: Target, points: list[Point]) -> list[str]:
    """Per tool: the best ratio that meets each of the Target's thresholds (or that none does)."""
    lines = []
    for tool in TOOLS:
        mine = [p for p in points if p.tool == tool and not p.error]
        if not mine:
            continue
        parts = []
        for threshold in target.thresholds:
            ok = [p for p in mine if p.metrics[threshold.metric] >= threshold.at_least]
            if ok:
                best = max(ok, key=lambda p: p.ratio)
                parts.append(f"{threshold.label}: {best.ratio:.2f}x ({best.settings})")
            else:
                low = max(mine, key=lambda p: p.metrics[threshold.metric])
                parts.append(f"{threshold.label}: none (best {threshold.metric} {low.metrics[threshold.metric]:.5f})")
        lines.append(f"{tool}: best ratio at " + "; ".join(parts))
    return lines


def write(out: Path, info: dict, sections: list[tuple[Target, list[Point], str, dict[str, float]]]) -> None:
    """Write peers.md (header, tables, summaries, notes, timings) and peers.json (every point) to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    md, data = [], {"machine": info, "models": {}}
    from peerlib.machine import header_lines

    md += [f"- {line}" for line in header_lines(info)]
    for target, points, text, sweep_seconds in sections:
        md += ["", text]
        data["models"][target.name] = {
            "title": target.title,
            "fp32_bytes": target.fp32_bytes,
            "notes": target.notes,
            "sweep_seconds": sweep_seconds,
            "points": [p.to_json() for p in points],
        }
    (out / "peers.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "peers.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def section(target: Target, points: list[Point], sweep_seconds: dict[str, float]) -> str:
    """A model's whole printed section: title, fp32 size, notes, table, summaries, sweep times."""
    lines = [f"## {target.title}", "", f"fp32 parameters: {target.fp32_bytes:,} bytes (4 x numel of all {len(target.state_dict)} tensors)", ""]
    lines += [f"- {note}" for note in target.notes]
    lines += ["", table(target, points), ""]
    lines += [f"- {line}" for line in summary(target, points)]
    failed = [p for p in points if p.error]
    lines += [f"- not measured: [{p.tool}] {p.settings}: {p.error}" for p in failed]
    lines.append("- sweep time: " + ", ".join(f"{tool} {s:.0f} s" for tool, s in sweep_seconds.items()))
    return "\n".join(lines)
