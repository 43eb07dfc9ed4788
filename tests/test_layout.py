"""The package's import layout, read from the source with `ast` (nothing is imported).

Every import statement counts: top level, inside functions, under TYPE_CHECKING. A
package's `__init__` is the package's own module (`deepzip.report`), and the implicit
import of a parent package that Python performs first is not an edge: it would make every
module depend on `deepzip/__init__`. Checked: no import cycles; the layers (format and
codec below training, training below the runtime-free rest); no torch.nn in the format
layer; no module over MAX_LINES lines.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "deepzip"
MAX_LINES = 420

LOWER = ("deepzip.codec", "deepzip.container", "deepzip.compressed", "deepzip.errors", "deepzip.limits")
# (modules under these packages, packages they must never reach)
LAYERS = (
    (LOWER, ("deepzip.train", "deepzip.runtime", "deepzip.checkpoints", "deepzip.report", "deepzip.paper", "deepzip.cli")),
    (("deepzip.train",), ("deepzip.runtime", "deepzip.report", "deepzip.paper", "deepzip.checkpoints", "deepzip.budget", "deepzip.cli")),
    (("deepzip.budget",), ("deepzip.runtime", "deepzip.report", "deepzip.paper", "deepzip.checkpoints", "deepzip.cli")),
    (("deepzip.runtime",), ("deepzip.train", "deepzip.report", "deepzip.paper", "deepzip.cli")),
)
NO_TORCH_NN = ("deepzip.container", "deepzip.codec", "deepzip.compressed")


# ---------------------------------------------------------------- reading the source


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under src/package; __init__ names the package."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def within(module: str, packages: Iterable[str]) -> str | None:
    """The first of `packages` that is `module` or contains it, else None."""
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def imported_names(tree: ast.AST, module: str, is_package: bool, known: Iterable[str]) -> set[str]:
    """Absolute names of everything `tree` (the source of `module`) imports, wherever the statement is.

    `from X import a` names X.a when X.a is one of the `known` modules (or X is not ours,
    so that `from torch import nn` names torch.nn), else X. A name of ours that is no
    module names its longest known prefix (a function or class of that module).
    """
    known = set(known)
    base = module.split(".") if is_package else module.split(".")[:-1]

    def ours(name: str) -> str:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                source = ".".join(anchor + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if within(source, [PACKAGE]) is None:
                    names.add(candidate if alias.name != "*" else source)
                else:
                    names.add(candidate if candidate in known else source)
    return {ours(n) if within(n, [PACKAGE]) else n for n in names}


def torch_nn_uses(tree: ast.AST) -> list[str]:
    """Where `tree` imports torch.nn (or a submodule) or reaches it as the attribute `torch.nn`."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            hits = [a.name for a in node.names if within(a.name, ["torch.nn"])]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            hits = [f"{node.module}.{a.name}" for a in node.names if within(f"{node.module}.{a.name}", ["torch.nn"])]
            hits += [node.module] if within(node.module, ["torch.nn"]) else []
        elif isinstance(node, ast.Attribute) and node.attr == "nn" and isinstance(node.value, ast.Name) and node.value.id == "torch":
            hits = ["torch.nn (attribute)"]
        else:
            continue
        uses += [f"line {node.lineno}: {hit}" for hit in sorted(set(hits))]
    return uses


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """{module: the modules of ours it imports}, self-imports dropped."""
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        names = imported_names(tree, module, path.name == "__init__.py", files)
        graph[module] = {n for n in names if n in files and n != module}
    return graph


# ---------------------------------------------------------------- graph algorithms


def find_cycles(graph: Mapping[str, Iterable[str]], limit: int = 100) -> list[list[str]]:
    """Every elementary cycle of `graph` (up to `limit`), each starting at its smallest node.

    Tarjan's strongly connected components first, then, inside each component, the simple
    paths from each node s back to s through nodes greater than s (each cycle found once).
    """
    graph = {n: sorted(set(vs)) for n, vs in graph.items()}
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # recursive Tarjan; the package graph is shallow
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles: list[list[str]] = []
    for component in components:
        for start in sorted(component):
            allowed = {n for n in component if n > start}
            paths = [[start]]
            while paths and len(cycles) < limit:
                path = paths.pop()
                for nxt in graph[path[-1]]:
                    if nxt == start:
                        cycles.append(path[:])
                    elif nxt in allowed and nxt not in path:
                        paths.append(path + [nxt])
    return sorted(cycles)[:limit]


def shortest_path(graph: Mapping[str, Iterable[str]], start: str, goal: Callable[[str], bool], through: Callable[[str], bool]) -> list[str] | None:
    """The shortest import chain from `start` to a node where `goal` holds, expanding only nodes where `through` holds."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt in previous:
                continue
            previous[nxt] = node
            if goal(nxt):
                chain = [nxt]
                while previous[chain[-1]] is not None:
                    chain.append(previous[chain[-1]])
                return chain[::-1]
            if through(nxt):
                queue.append(nxt)
    return None


def layer_violations(graph: Mapping[str, Iterable[str]], layers=LAYERS) -> list[str]:
    """One line per (module, forbidden package) it reaches, with the shortest chain.

    A chain is not followed through another module bound by the same rule: that module's
    own line reports the import, so one bad edge is not repeated for every module above it.
    """
    lines = []
    for sources, forbidden in layers:
        for module in sorted(m for m in graph if within(m, sources)):
            for target in forbidden:
                chain = shortest_path(
                    graph, module, lambda n, t=target: within(n, [t]) is not None, lambda n: within(n, sources) is None
                )
                if chain:
                    lines.append(f"{module} -> {target}: " + " -> ".join(chain))
    return lines


# ---------------------------------------------------------------- the checks on src/deepzip


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    found = module_files()
    assert len(found) > 20 and PACKAGE in found and "deepzip.report" in found
    return found


@pytest.fixture(scope="module")
def graph(files) -> dict[str, set[str]]:
    return import_graph(files)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_layering(graph):
    violations = layer_violations(graph)
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_format_layer_does_not_use_torch_nn(files, graph):
    uses = {m: torch_nn_uses(ast.parse(p.read_text(), str(p))) for m, p in files.items()}

    def outside(module: str) -> bool:
        return within(module, NO_TORCH_NN) is None

    problems = []
    for module in sorted(m for m in files if within(m, NO_TORCH_NN)):
        problems += [f"{module}: {use}" for use in uses[module]]
        # Or through modules of ours outside these packages (one inside reports its own uses).
        chain = shortest_path(graph, module, lambda n: outside(n) and bool(uses[n]), outside)
        if chain:
            problems.append(f"{module}: via " + " -> ".join(chain))
    assert not problems, "torch.nn in the format layer:\n" + "\n".join(problems)


def test_modules_are_short(files):
    lengths = sorted(((len(p.read_text().splitlines()), m) for m, p in files.items()), reverse=True)
    longest = "\n".join(f"{n:5d}  {m}" for n, m in lengths[:5])
    print(f"longest modules:\n{longest}")
    too_long = [f"{m}: {n} lines" for n, m in lengths if n > MAX_LINES]
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_no_module_cites_a_path_outside_the_repository(files):
    # A docstring that points at a machine's folders (/work/shared/...) means nothing to a
    # reader of the package; cite the measurement or the paper instead.
    pattern = re.compile(r"(?<![\w.])/(?:work|home|tmp|root|Users)/")
    cited = [f"{m}:{i}" for m, p in files.items() for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not cited, "paths outside the repository:\n" + "\n".join(cited)


# ---------------------------------------------------------------- the helpers on synthetic input


def test_find_cycles_on_synthetic_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # Two cycles through b, one more in a separate component, a tail (d) in none.
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": {"a", "e"}, "e": {"f"}, "f": {"e"}}
    assert find_cycles(graph) == [["a", "b"], ["b", "c"], ["e", "f"]]
    triangle = {"x": {"y"}, "y": {"z"}, "z": {"x", "y"}}
    assert find_cycles(triangle) == [["x", "y", "z"], ["y", "z"]]


def test_imported_names_resolve_relative_and_nested_imports():
    source = """
from __future__ import annotations
import torch.nn.functional as F
from typing import TYPE_CHECKING
from . import sibling
from .sibling import helper
from ..codec import sparse
from .. import errors
from deepzip import prune_
if TYPE_CHECKING:
    from deepzip.train.sensitivity import SensitivityTable
def lazy():
    import deepzip.report.plots
"""
    known = {"deepzip", "deepzip.codec", "deepzip.codec.sparse", "deepzip.errors", "deepzip.report",
             "deepzip.report.sibling", "deepzip.report.plots", "deepzip.train", "deepzip.train.sensitivity"}  # fmt: skip
    names = imported_names(ast.parse(source), "deepzip.report.tables", False, known)
    assert {n for n in names if within(n, [PACKAGE])} == {
        "deepzip", "deepzip.codec.sparse", "deepzip.errors", "deepzip.report.sibling",
        "deepzip.report.plots", "deepzip.train.sensitivity",
    }  # fmt: skip
    assert "torch.nn.functional" in names
    # In a package's __init__, one dot is the package itself.
    assert imported_names(ast.parse("from . import sibling"), "deepzip.report", True, known) == {"deepzip.report.sibling"}


def test_layer_violations_and_torch_nn_on_synthetic_input():
    # codec.a reaches train only through errors, whose own line reports it.
    graph = {"deepzip.codec.a": {"deepzip.errors"}, "deepzip.errors": {"deepzip"}, "deepzip": {"deepzip.train.b"}}
    assert layer_violations(graph) == ["deepzip.errors -> deepzip.train: deepzip.errors -> deepzip -> deepzip.train.b"]
    assert layer_violations({"deepzip.train.b": {"deepzip.codec.a"}, "deepzip.codec.a": set()}) == []
    uses = torch_nn_uses(ast.parse("import torch\nfrom torch import nn, Tensor\nimport torch.nn.functional as F\nx = torch.nn.Linear\ny = torch.tensor"))
    assert uses == ["line 2: torch.nn", "line 3: torch.nn.functional", "line 4: torch.nn (attribute)"]
    assert torch_nn_uses(ast.parse("import torch\nfrom torch.utils import data\nx = torch.zeros(3)")) == []
