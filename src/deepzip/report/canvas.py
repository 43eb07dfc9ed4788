"""What every figure of deepzip.report shares: the PNG path check, the Agg canvas, panels, colors.

Figures are built on matplotlib's object API with the Agg canvas (`Figure` +
`FigureCanvasAgg`), never pyplot: no display is needed, no global backend is switched
under the caller (a notebook keeps its own), and no figure lingers in pyplot's registry
after it is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepzip.errors import ConfigError

DPI = 110
BINS = 101  # odd, so that one bin is centred on 0 and the pruned gap shows symmetric
# Counts spanning more than this factor get a log y axis, or the small bars vanish.
LOG_SPAN = 30
COLORS = {"dense": "#9e9e9e", "pruned": "#1f77b4", "quantized": "#ff7f0e", "file": "#2ca02c"}


def png_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, checked before any drawing starts."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: plots are written as PNG; give a path ending in .png")
    return path


def save(figure: Figure, path: Path) -> Path:
    """Render `figure` on an Agg canvas into the PNG `path` (parents created); returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)  # attaches itself to the figure
    figure.savefig(path, format="png", dpi=DPI)
    return path


def grid(n: int, columns: int, panel: tuple[float, float], title: str) -> tuple[Figure, list]:
    """A figure with `n` panels in rows of at most `columns`; returns (figure, axes used)."""
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax in axes[n:]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize="large", fontweight="bold")
    return figure, list(axes[:n])


def log_if_wide(ax, counts) -> None:
    """Log y scale when the nonzero counts span more than LOG_SPAN (decades of counts)."""
    positive = np.asarray(counts)[np.asarray(counts) > 0]
    if positive.size and positive.max() / positive.min() > LOG_SPAN:
        ax.set_yscale("log")


def as_numpy(tensor) -> np.ndarray:
    """A tensor or array-like as a flat float32 NumPy array (detached, on the CPU)."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().to(torch.float32).cpu().numpy().ravel()
    return np.asarray(tensor, dtype=np.float32).ravel()


def symmetric_edges(*arrays: np.ndarray | None) -> np.ndarray:
    """BINS equal bins symmetric around 0 that cover all `arrays`, so 0 sits in a bin's middle."""
    extent = max((float(np.abs(a).max()) for a in arrays if a is not None and a.size), default=0.0)
    extent = extent or 1.0
    return np.linspace(-extent, extent, BINS + 1) * (1 + 1e-6)
