"""Analysis of a .dzip file: per-layer byte accounting, tables, plots and a Markdown report."""

from deepzip.report.tables import LayerStats, format_table, layer_stats, summary, write_report

__all__ = ["LayerStats", "format_table", "layer_stats", "summary", "write_report"]
