"""A snapshot names only what it holds: every route configuration a listener asks for over RDS
and every cluster a listener or a route sends to is in it (or static in Envoy's bootstrap).
Envoy would accept an inconsistent snapshot and then wait, or answer 503, so the agent refuses
to publish one. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

# Subtrees that hold text, not references: log formats, metadata.
NOT_REFERENCES = frozenset({"access_log", "metadata", "json_format", "filter_metadata"})


def references(node: Any, key: str) -> Iterator[str]:
    """Every string value under `key`, at any depth (but in NOT_REFERENCES)."""
    if isinstance(node, Mapping):
        for k, value in node.items():
            if k in NOT_REFERENCES:
                continue
            if k == key and isinstance(value, str):
                yield value
            else:
                yield from references(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from references(item, key)


def inconsistencies(
    clusters: Sequence[Mapping[str, Any]],
    listeners: Sequence[Mapping[str, Any]],
    routes: Sequence[Mapping[str, Any]],
    static_clusters: Iterable[str] = (),
) -> list[str]:
    """What the resources name that is not among them, one sentence each."""
    cluster_names = {c["name"] for c in clusters} | set(static_clusters)
    route_names = {r["name"] for r in routes}
    problems = []
    for listener in listeners:
        for name in sorted(set(references(listener, "route_config_name")) - route_names):
            problems.append(f"listener {listener['name']} asks for route configuration {name}")
    for kind, items in (("listener", listeners), ("route configuration", routes)):
        for item in items:
            named = {*references(item, "cluster"), *references(item, "cluster_name")}
            for name in sorted(named - cluster_names):
                problems.append(f"{kind} {item['name']} sends to cluster {name}")
    return problems
