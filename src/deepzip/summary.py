"""What a compression step did to each tensor, and why it left the others raw.

`prune_`, `quantize_` and `compress` return (or attach) a `Summary`; the CLI prints it. It
is also a read-only mapping {target name: value} of what was compressed (the kept
fraction for `prune_`, the bits for `quantize_`), which is what those functions returned
before summaries existed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One tensor: its key(s), shape, and what happened (`detail`) or why not (`reason`)."""

    name: str
    shape: tuple[int, ...]
    compressed: bool
    detail: str


# eq=False: compare as the mapping it is (Mapping.__eq__), so old `== {...}` checks hold.
@dataclass(frozen=True, eq=False)
class Summary(Mapping):
    """Rows for every tensor a step looked at, plus {target name: value} of the compressed ones."""

    step: str
    rows: tuple[Row, ...]
    values: Mapping[str, float | int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float | int:
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def compressed(self) -> tuple[Row, ...]:
        """The rows of tensors the step compressed."""
        return tuple(row for row in self.rows if row.compressed)

    @property
    def raw(self) -> tuple[Row, ...]:
        """The rows of tensors the step left raw, each with its reason."""
        return tuple(row for row in self.rows if not row.compressed)

    def format(self) -> str:
        """A plain-text table: compressed tensors first, then the raw ones with their reasons."""
        width = max([len(row.name) for row in self.rows] + [6])
        lines = [f"{self.step}: {len(self.compressed)} tensors compressed, {len(self.raw)} left raw"]
        for title, rows in (("compressed", self.compressed), ("left raw", self.raw)):
            if rows:
                lines.append(f"  {title}:")
                lines += [f"    {row.name:<{width}}  {_shape(row.shape):<16}  {row.detail}" for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"
