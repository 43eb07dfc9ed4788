"""Analysis of a .dzip file: per-layer byte accounting, tables, plots and a Markdown report.

Names load on first use (PEP 562): `deepzip info` needs the tables alone, not matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepzip.lazy import loader

_EXPORTS = {
    "write_report": "deepzip.report.markdown",
    "LayerStats": "deepzip.report.stats",
    "layer_stats": "deepzip.report.stats",
    "summary": "deepzip.report.stats",
    "format_table": "deepzip.report.tables",
}

__all__ = sorted(_EXPORTS)


__getattr__ = loader("deepzip.report", globals(), _EXPORTS)


if TYPE_CHECKING:
    from deepzip.report.markdown import write_report
    from deepzip.report.stats import LayerStats, layer_stats, summary
    from deepzip.report.tables import format_table
