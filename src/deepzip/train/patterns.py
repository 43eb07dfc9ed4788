"""The one pattern resolver: per-tensor settings picked by fnmatch-style name patterns.

Every setting deepzip takes (sparsity, bits, index bits, include / exclude / layers) is one
value for every target or an ordered {pattern: value} mapping, first match wins. A target is
one stored tensor; it is reached through one or more *sites* (a tied tensor has one site per
module that holds it), and each site answers to several names: its state-dict key
(`fc1.weight`), the key without `.weight` (`fc1`) and the name of the module that holds it
(`lstm` for `lstm.weight_ih_l0`). A pattern that matches no target is an error: it is almost
always a typo.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TypeVar

from deepzip.errors import ConfigError

T = TypeVar("T")

Sites = Sequence[Collection[str]]  # per site, the names a pattern may match


def site_names(key: str, module_name: str | None = None) -> tuple[str, ...]:
    """The names one site answers to: its key, the key without `.weight`, its module's name."""
    names = [key]
    if key.endswith(".weight"):
        names.append(key[: -len(".weight")])
    if module_name:
        names.append(module_name)
    return tuple(dict.fromkeys(names))


def _first_match(names: Iterable[str], patterns: Mapping[str, T]) -> tuple[str, T] | None:
    names = list(names)
    for pattern, value in patterns.items():
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return pattern, value
    return None


def _matches(sites: Sites, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for names in sites for name in names)


def check_patterns(targets: Mapping[str, Sites], patterns: Iterable[str], what: str) -> None:
    """ConfigError for the first pattern that matches no target, listing the targets."""
    for pattern in patterns:
        if not any(_matches(sites, pattern) for sites in targets.values()):
            known = ", ".join(list(targets)[:12]) + (", ..." if len(targets) > 12 else "")
            raise ConfigError(f"{what}: pattern {pattern!r} matches no tensor (candidates: {known or 'none'})")


def select(targets: Mapping[str, Sites], patterns: Sequence[str] | None, what: str) -> dict[str, Sites]:
    """The targets one of `patterns` matches (all of them for None); unmatched patterns are errors."""
    if patterns is None:
        return dict(targets)
    patterns = list(patterns)
    check_patterns(targets, patterns, what)
    return {name: sites for name, sites in targets.items() if any(_matches(sites, p) for p in patterns)}


def resolve(targets: Mapping[str, Sites], setting: T | Mapping[str, T] | None, what: str) -> dict[str, T]:
    """{target: value} for the targets `setting` reaches.

    One value reaches every target; a mapping reaches a site through the first pattern (in
    order) that matches one of its names, and a target through its sites. The sites of a
    tied target are one tensor, so they must not get different values: that is an error
    naming both. Targets no pattern reaches are left out.
    """
    if setting is None:
        return {}
    if not isinstance(setting, Mapping):
        return {name: setting for name in targets}
    check_patterns(targets, setting, what)
    resolved: dict[str, T] = {}
    for name, sites in targets.items():
        found = [match for match in (_first_match(names, setting) for names in sites) if match is not None]
        if not found:
            continue
        values = {repr(value) for _, value in found}
        if len(values) > 1:
            shown = " and ".join(f"{value!r} (pattern {pattern!r})" for pattern, value in found)
            raise ConfigError(f"{what}: {name!r} is one tensor shared by several modules (tied) but gets {shown}")
        resolved[name] = found[0][1]
    return resolved
