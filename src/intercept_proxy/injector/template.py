"""The injection, rendered into the chart: one definition of the injected containers and volumes.

The injector (pod.py) is the only place that says what the interceptor's containers and volumes
are. The chart's Kyverno policies need the same objects for whatever values a release is
installed with, so this module renders the injector once with *sentinels* (values.HELM_PARAMETERS:
a valid value per setting that nothing else contains) and turns the result into Helm template
text: every sentinel becomes the setting's Helm pipeline, every list of a setting's items becomes
a `range`, and where a setting's value changes the shape (the CA's mode), the renderings for each
of its values become an `if`. The output is committed as charts/intercept-proxy/templates/
_injection.tpl; a test renders it again and fails when it is stale, and the chart is checked
against the injector by real Helm and real Kyverno. A setting used in a way a template cannot
express (a sentinel left inside a longer string) is an error here, never a silent difference.

Pure functions: `chart_template()` is the file's text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from intercept_proxy.agent.control import approver_commands
from intercept_proxy.injector import cninode, gateway
from intercept_proxy.injector.pod import (
    AGENT,
    SIDECARS,
    TRUST_BUNDLE,
    TRUST_MOUNT,
    TRUST_VARIABLES,
    interceptor_containers,
    verified,
    volumes,
)
from intercept_proxy.injector.settings import InjectorSettings, Resources
from intercept_proxy.injector.values import HELM_PARAMETERS, Parameter

PATH = "charts/intercept-proxy/templates/_injection.tpl"


class TemplateError(ValueError):
    """The injector uses a setting in a way a Helm template cannot express."""


@dataclass(frozen=True)
class Expr:
    """A Helm pipeline whose value, as JSON, stands here."""

    pipeline: str


@dataclass(frozen=True)
class Choice:
    """A part that depends on a setting's value: one rendering per value."""

    pipeline: str
    branches: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Range:
    """The items a list setting contributes to a list: `group` for each of its items."""

    pipeline: str
    group: tuple[Any, ...]


Path = tuple[int | str, ...]

# What the chart's policies read, each rendered from the injector.
DOCUMENTS: dict[str, Callable[[InjectorSettings], Any]] = {
    "containers": interceptor_containers,
    "volumes": volumes,
    # What the validation compares in a pod as stored (other admission plugins may add to it).
    "verified": lambda s: {
        "initContainers": [verified(c) for c in interceptor_containers(s)],
        "volumes": volumes(s),
    },
    "trust": lambda s: {
        "env": [{"name": v, "value": TRUST_BUNDLE} for v in TRUST_VARIABLES],
        "volumeMount": TRUST_MOUNT,
    },
    "sidecarNames": lambda s: list(SIDECARS),
    # The egress gateway's pod, and what its clients need to trust it.
    "gateway": lambda s: {
        "name": gateway.NAME,
        "pod": gateway.pod_spec(s),
        "caSecret": gateway.CA_SECRET,
        "clientTrust": gateway.client_trust(s),
    },
    # CNI mode's node agent (its DaemonSet's pod).
    "cniNode": lambda s: {"name": cninode.NAME, "pod": cninode.pod_spec(s)},
    # The one exception to no-exec-into-sidecars: the approvers' commands in the agent's.
    "approvals": lambda s: {
        "agent": AGENT,
        "others": [name for name in SIDECARS if name != AGENT],
        "commands": approver_commands(),
    },
}


def _sentinels(choices: dict[str, Any]) -> InjectorSettings:
    """Settings holding every sentinel, and `choices` for the settings that shape the result."""
    given: dict[str, Any] = {}
    for name, p in HELM_PARAMETERS.items():
        if p.choices:
            given[name] = choices.get(name, p.choices[0])
    for name, p in HELM_PARAMETERS.items():
        if p.choices:
            continue
        if p.only_with is not None and given[p.only_with[0]] != p.only_with[1]:
            continue
        given[name] = p.sentinel
    return InjectorSettings(**given)


def _leaves() -> dict[str, tuple[Any, str]]:
    """How each scalar or mapping sentinel appears in a rendering, by JSON text: the value and
    the pipeline rendering it so."""
    out: dict[str, tuple[Any, str]] = {}
    for p in HELM_PARAMETERS.values():
        value = p.sentinel
        if value is None or isinstance(value, tuple):
            continue
        if isinstance(value, Resources):
            out[json.dumps(value.to_k8s(), sort_keys=True)] = (value.to_k8s(), p.helm)
            continue
        out[json.dumps(value)] = (value, p.helm)
        if not isinstance(value, str):  # also written as text (a command's argument)
            text = f"{value:g}" if isinstance(value, float) else str(value)
            out[json.dumps(text)] = (text, f"{p.helm} | toString")
    return out


def _ranges(items: list[Any], lists: dict[str, Parameter]) -> list[Any]:
    """`items` with the run of each list setting's items replaced by a Range."""
    for p in lists.values():
        first, second = (str(v) for v in p.sentinel)
        if first not in items:
            continue
        i, j = items.index(first), items.index(second)
        size = j - i
        for offset in range(size - 1, -1, -1):  # the item last in its group: `--opt VALUE`
            start = i - offset
            if start < 0 or j - offset + size > len(items):
                continue
            a, b = items[start : start + size], items[j - offset : j - offset + size]
            if all(x == y for k, (x, y) in enumerate(zip(a, b, strict=True)) if k != offset):
                group = tuple(Expr(p.item) if k == offset else x for k, x in enumerate(a))
                return [
                    *items[:start],
                    Range(p.helm, group),
                    *_ranges(items[start + 2 * size :], lists),
                ]
        raise TemplateError(f"the items of {p.helm} are not rendered as a repeated group")
    return items


def _substitute(node: Any) -> Any:
    leaves = _leaves()
    lists = {n: p for n, p in HELM_PARAMETERS.items() if isinstance(p.sentinel, tuple)}

    def walk(x: Any) -> Any:
        if isinstance(x, Expr):
            return x
        if isinstance(x, Range):
            return Range(x.pipeline, tuple(walk(g) for g in x.group))
        key = json.dumps(x, sort_keys=True)
        if key in leaves:
            return Expr(leaves[key][1])
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in _ranges(list(x), lists)]
        return x

    return walk(node)


def _differences(a: Any, b: Any, path: Path = ()) -> Iterator[Path]:
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in a:
            yield from _differences(a[k], b[k], (*path, k))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _differences(x, y, (*path, k))
    elif a != b:
        yield path


def _at(node: Any, path: Path) -> Any:
    for k in path:
        node = node[k]
    return node


def _replace(node: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)  # type: ignore[index]
    return copy


def _document(render: Callable[[InjectorSettings], Any]) -> Any:
    """`render`'s result as a template tree: sentinels as Exprs, each shaping setting's
    differences as an Expr (where the value is written as is) or a Choice."""
    tree = _substitute(render(_sentinels({})))
    taken: list[Path] = []
    for name, p in HELM_PARAMETERS.items():
        if not p.choices:
            continue
        renders = {v: _substitute(render(_sentinels({name: v}))) for v in p.choices}
        base = renders[p.choices[0]]
        paths = sorted({d for r in renders.values() for d in _differences(base, r)})
        for path in paths:
            if any(path[: len(t)] == t or t[: len(path)] == path for t in taken):
                raise TemplateError(f"{name} and another setting shape the same part {path}")
            values = {v: _at(r, path) for v, r in renders.items()}
            written = all(values[v] == (str(v) if isinstance(v, str) else v) for v in values)
            part = Expr(p.helm) if written else Choice(p.helm, tuple(values.items()))
            tree = _replace(tree, path, part)
        taken += paths
    return tree


def _condition(pipeline: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"({pipeline})" if value else f"not ({pipeline})"
    return f"eq ({pipeline}) {json.dumps(str(value))}"


def _text(node: Any, depth: int = 0) -> str:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(node, Expr):
        return "{{ " + node.pipeline + " | toJson }}"
    if isinstance(node, Choice):
        out = ""
        for i, (value, branch) in enumerate(node.branches):
            if i == len(node.branches) - 1:
                out += "{{ else }}"
            else:
                out += "{{ if " if i == 0 else "{{ else if "
                out += _condition(node.pipeline, value) + " }}"
            out += _text(branch, depth)
        return out + "{{ end }}"
    if isinstance(node, dict):
        if not node:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_text(v, depth + 1)}" for k, v in node.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(node, list):
        if not node:
            return "[]"
        if isinstance(node[0], Range):
            raise TemplateError("a list may not start with a setting's items")
        out = "[\n"
        for i, item in enumerate(node):
            if isinstance(item, Range):
                group = ", ".join(_text(g, depth + 1) for g in item.group)
                out += f"\n{inner}{{{{- range {item.pipeline} }}}},\n{inner}{group}"
                out += f"\n{inner}{{{{- end }}}}"
                continue
            out += ("" if i == 0 else ",\n") + inner + _text(item, depth + 1)
        return out + f"\n{pad}]"
    return json.dumps(node)


def _check_no_sentinel(name: str, text: str) -> None:
    for setting, p in HELM_PARAMETERS.items():
        values = p.sentinel if isinstance(p.sentinel, tuple) else (p.sentinel,)
        for value in values:
            if isinstance(value, Resources):
                value = next(iter(value.requests.values()))
            if value is not None and str(value) in text:
                raise TemplateError(
                    f"{name}: {setting} ({value!r}) is used in a way a template cannot express"
                )


def chart_template() -> str:
    """The text of charts/intercept-proxy/templates/_injection.tpl."""
    missing = {f.name for f in dataclasses.fields(InjectorSettings)} - set(HELM_PARAMETERS)
    if missing:
        raise TemplateError(f"settings without a Helm parameter: {sorted(missing)}")
    parts = [
        "{{- /*\nGenerated by intercept_proxy.injector.template from the injector "
        "(src/intercept_proxy/injector/pod.py):\nedit the injector, then regenerate "
        "(UPDATE_GOLDEN=1 pytest tests/injector/test_template.py).\nEach definition is a JSON "
        "document for this release's values.\n*/ -}}\n"
    ]
    for name, render in DOCUMENTS.items():
        text = _text(_document(render))
        _check_no_sentinel(name, text)
        parts.append(
            f'\n{{{{- define "intercept-proxy.injection.{name}" -}}}}\n{text}\n{{{{- end }}}}\n'
        )
    return "".join(parts)


if __name__ == "__main__":
    print(chart_template(), end="")
