"""Analysis of a .dzip file: per-layer byte accounting, tables, plots and a Markdown report."""

from deepzip.report.markdown import write_report
from deepzip.report.stats import LayerStats, layer_stats, summary
from deepzip.report.tables import format_table

__all__ = ["LayerStats", "format_table", "layer_stats", "summary", "write_report"]
