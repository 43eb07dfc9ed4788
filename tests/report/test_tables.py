"""The paper-style table (deepzip.report.tables): one row per stored tensor, totals from the file."""

import struct

from deepzip.report.stats import layer_stats, summary
from deepzip.report.tables import format_table


def rows(table: str) -> list[list[str]]:
    """The table's rows split into cells, rule lines dropped."""
    return [line.split() for line in table.splitlines() if line and set(line) != {"-"}]


def test_format_table(saved):
    _, data = saved
    table = rows(format_table(data))
    for name in [s.name for s in layer_stats(data)]:
        assert len([row for row in table if row[0] == name]) == 1, name
    (total,) = [row for row in table if row[0] == "total"]
    assert total[-1] == f"{summary(data)['ratio']:.1f}x"
    assert total[-2] == f"{len(data):,}"
    # The overhead row carries preamble + header + trailer, the header size read per
    # FORMAT.md (version 2: the trailer's u32 at 8 bytes before the end).
    (header_size,) = struct.unpack_from("<I", data, len(data) - 8)
    (overhead,) = [row for row in table if row[0] == "header+crc+aliases+files"]
    assert overhead[-1] == f"{16 + header_size + 8:,}"


def test_format_table_of_edge_tensors(edge_file):
    table = rows(format_table(edge_file))
    assert [row[0] for row in table] == ["tensor", "empty", "scalar", "w", "header+crc+aliases+files", "total"]
    (empty,) = [row for row in table if row[0] == "empty"]
    assert empty[-1] == "-"  # no ratio for a tensor of no bytes


def test_aliases_and_attached_files_are_overhead(tied_file):
    table = rows(format_table(tied_file))
    assert [row[0] for row in table][1:] == ["emb.weight", "header+crc+aliases+files", "total"]
    (total,) = [row for row in table if row[0] == "total"]
    assert total[-1] == f"{4 * 64 * 32 / len(tied_file):.1f}x"
