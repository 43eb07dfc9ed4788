"""Analysis of a .dzip file: per-layer byte accounting, tables, plots and a Markdown report.

Names load on first use (PEP 562): `deepzip info` needs the tables alone, not matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "write_report": "deepzip.report.markdown",
    "LayerStats": "deepzip.report.stats",
    "layer_stats": "deepzip.report.stats",
    "summary": "deepzip.report.stats",
    "format_table": "deepzip.report.tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Load the module that defines `name` on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'deepzip.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from deepzip.report.markdown import write_report
    from deepzip.report.stats import LayerStats, layer_stats, summary
    from deepzip.report.tables import format_table
