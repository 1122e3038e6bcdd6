"""Kyverno's admission of a Pod, for the subset of ClusterPolicy features the chart uses.

Modelled on Kyverno's engine (pkg/engine: mutation, handlers/mutation, variables, mutate/patch,
anchor, operator); see tests/chart/test_consistency.py for the scope and what is left out.
Anything outside the subset raises UnsupportedError, so the chart cannot come to depend on it.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tests.chart import jmespath


class UnsupportedError(NotImplementedError):
    """A Kyverno feature the model does not cover."""


class PatchError(ValueError):
    """A JSON patch that does not apply (RFC 6902, without Kyverno's leniency)."""


# Kyverno's regular expressions for variables (pkg/engine/variables/regex).
_VARIABLE = re.compile(r"(^|[^\\])(\{\{(?:\{[^{}]*\}|[^{}])*\}\})")
_ESCAPED_VARIABLE = re.compile(r"\\\{\{(\{[^{}]*\}|[^{}])*\}\}")
_REFERENCE = re.compile(r"\$\(")


def go_sprint(value: Any) -> str:
    """fmt.Sprint, for the strings the chart compares (numbers are compared with Equals: as
    float64, Sprint would write 1000000 as 1e+06)."""
    if not isinstance(value, str):
        raise UnsupportedError(f"AnyIn/AnyNotIn on {value!r}: compare numbers with Equals")
    return value


def go_json(value: Any) -> str:
    """encoding/json's Marshal: compact, sorted keys, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def substitute(document: Any, context: dict[str, Any]) -> Any:
    """Variables in every string of a document (variables.SubstituteAll): a string that is one
    variable becomes its value; otherwise values are written into the text (strings as they
    are, the rest as JSON) and the text is scanned again."""
    if isinstance(document, dict):
        return {substitute(k, context): substitute(v, context) for k, v in document.items()}
    if isinstance(document, list):
        return [substitute(v, context) for v in document]
    if not isinstance(document, str):
        return document
    if _REFERENCE.search(document):
        raise UnsupportedError(f"$(...) reference in {document!r}")
    text = document
    while matches := list(_VARIABLE.finditer(text)):
        original = text
        for m in matches:
            variable = m.group(2)
            expression = variable.replace("{{", "").replace("}}", "").strip()
            if expression == "@":
                raise UnsupportedError("the @ variable")
            value = jmespath.query(expression, context)
            if original == variable:
                return value
            replacement = value if isinstance(value, str) else go_json(value)
            text = text.replace(m.group(0), m.group(1) + replacement, 1)
    return _ESCAPED_VARIABLE.sub(lambda m: m.group(0)[1:], text)


# Operators (pkg/engine/variables/operator), for the types the chart compares.
def _wildcard(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _in(key: Any, values: list[Any]) -> bool:
    return any(_wildcard(go_sprint(v), go_sprint(key)) for v in values)


def _equals(key: Any, value: Any) -> bool:
    if isinstance(key, bool) and isinstance(value, bool):
        return key is value
    if isinstance(key, str) and isinstance(value, str):
        return _wildcard(value, key)
    numbers = (int, float)
    if isinstance(key, numbers) and isinstance(value, numbers):
        return not isinstance(key, bool) and not isinstance(value, bool) and key == value
    if isinstance(key, dict | list):
        # reflect.DeepEqual on decoded JSON (every number a float64 on both sides): no
        # wildcards, true is not 1, and a map never equals a list.
        return jmespath.equal(key, value)
    # A null key: Equals and NotEquals are both false in Kyverno; the chart gives a default.
    raise UnsupportedError(f"Equals between {key!r} and {value!r}")


def _operator(name: str, key: Any, value: Any) -> bool:
    if name == "Equals":
        return _equals(key, value)
    if name == "NotEquals":
        return not _equals(key, value)
    if name in ("AnyIn", "AnyNotIn"):
        if not isinstance(value, list):
            raise UnsupportedError(f"{name} with a value that is not a list: {value!r}")
        keys = key if isinstance(key, list) else [key]
        if name == "AnyIn":
            return any(_in(k, value) for k in keys)
        return any(not _in(k, value) for k in keys)
    if name == "GreaterThan":
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (key, value)):
            raise UnsupportedError(f"GreaterThan between {key!r} and {value!r}")
        return key > value
    raise UnsupportedError(f"operator {name}")


def conditions_hold(conditions: dict[str, Any] | None, context: dict[str, Any]) -> bool:
    """`any` and `all` blocks of preconditions or deny conditions (both when both are given)."""
    if not conditions:
        return True
    if set(conditions) - {"any", "all"}:
        raise UnsupportedError(f"conditions {sorted(conditions)}")
    results = []
    for block, combine in (("any", any), ("all", all)):
        if block in conditions:
            checks = []
            for c in substitute(conditions[block], context):
                if set(c) - {"key", "operator", "value", "message"}:
                    raise UnsupportedError(f"condition fields {sorted(c)}")
                checks.append(_operator(c["operator"], c["key"], c["value"]))
            results.append(combine(checks))
    return all(results)


@dataclass(frozen=True)
class Request:
    """An admission request for a Pod: CREATE, or UPDATE with the pod before it; a request to
    a subresource (ephemeralcontainers) carries the whole pod too."""

    object: dict[str, Any]
    operation: str = "CREATE"
    old_object: dict[str, Any] | None = None
    subresource: str = ""

    def context(self, obj: dict[str, Any] | None = None, **variables: Any) -> dict[str, Any]:
        """Kyverno's JSON context: the request (its object as `obj`, when rules have changed
        it), and loop variables."""
        request = {
            "object": copy.deepcopy(self.object if obj is None else obj),
            "oldObject": copy.deepcopy(self.old_object),
            "operation": self.operation,
        }
        return {"request": request, **variables}

    def as_created(self) -> Request:
        """The old pod, as Kyverno evaluates it for allowExistingViolations."""
        assert self.old_object is not None
        return Request(self.old_object, "CREATE", None, self.subresource)


# Match and exclude (ResourceDescription): the fields the chart uses for pods.
RESOURCE_FIELDS = {"kinds", "operations", "selector", "annotations"}


def _describes(description: dict[str, Any], request: Request) -> bool:
    resources = description.get("resources") or {}
    if set(description) != {"resources"} or set(resources) - RESOURCE_FIELDS:
        raise UnsupportedError(f"match/exclude {description}")
    pod = request.object
    metadata = pod.get("metadata") or {}
    # A kind without a subresource matches the resource itself only.
    kind = "/".join(filter(None, (pod.get("kind"), request.subresource)))
    if "kinds" in resources and kind not in resources["kinds"]:
        return False
    if "operations" in resources and request.operation not in resources["operations"]:
        return False
    if "selector" in resources:
        selector = resources["selector"]
        if set(selector) != {"matchLabels"}:
            raise UnsupportedError(f"selector {selector}")
        labels = metadata.get("labels") or {}
        if any(labels.get(k) != v for k, v in selector["matchLabels"].items()):
            return False
    if "annotations" in resources:
        annotations = metadata.get("annotations") or {}
        for k, v in resources["annotations"].items():
            if k not in annotations or not _wildcard(v, annotations[k]):
                return False
    return True


def matches(rule: dict[str, Any], request: Request) -> bool:
    def block(which: str) -> bool:
        spec = rule.get(which) or {}
        if set(spec) - {"any"}:
            raise UnsupportedError(f"{which} {sorted(spec)}")
        return any(_describes(d, request) for d in spec.get("any") or [])

    return block("match") and not ("exclude" in rule and block("exclude"))


# JSON patches: RFC 6902 add, remove and replace, strictly (Kyverno is more lenient: it creates
# missing parents and ignores the removal of a missing path; the chart relies on neither).
def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise PatchError(f"{path!r} is not a JSON pointer")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, insert: bool) -> int:
    if token == "-" and insert:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not insert):
        raise PatchError(f"index {index} is out of range")
    return index


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict:
    doc = copy.deepcopy(document)
    for op in operations:
        if set(op) - {"op", "path", "value"} or op["op"] not in ("add", "remove", "replace"):
            raise UnsupportedError(f"JSON patch operation {op}")
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for token in parents:
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list):
                target = target[_index(target, token, insert=False)]
            else:
                raise PatchError(f"{op['path']}: {token!r} does not exist")
        if isinstance(target, dict):
            if op["op"] != "add" and last not in target:
                raise PatchError(f"{op['path']} does not exist")
            if op["op"] == "remove":
                del target[last]
            else:
                target[last] = copy.deepcopy(op["value"])
        elif isinstance(target, list):
            i = _index(target, last, insert=op["op"] == "add")
            if op["op"] == "add":
                target.insert(i, copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del target[i]
            else:
                target[i] = copy.deepcopy(op["value"])
        else:
            raise PatchError(f"{op['path']}: the parent is not a container")
    return doc


@functools.cache
def _operations(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _json_patch(text: str, resource: dict[str, Any], context: dict[str, Any]) -> dict:
    operations = _operations(substitute(text, context))
    if not isinstance(operations, list):
        raise PatchError(f"not a list of operations: {operations!r}")
    return apply_json_patch(resource, operations)


# Strategic merge patches with anchors (mutate/patch/strategicPreprocessing, then kyaml's
# merge2): maps merge, scalars and lists of scalars are replaced, `+(key)` is added only when
# the resource has no such key, and a list of maps is patched element by element through a
# conditional anchor on `name` (the elements of the resource it matches, by wildcard).
def _anchor(key: str) -> tuple[str, str]:
    if key.startswith("+(") and key.endswith(")"):
        return "add", key[2:-1]
    if key.startswith("(") and key.endswith(")"):
        return "condition", key[1:-1]
    if key[:1] in "<=^X" and key[1:2] == "(":
        raise UnsupportedError(f"anchor {key}")
    return "", key


def _merge(patch: Any, resource: Any) -> Any:
    if isinstance(patch, dict):
        out = copy.deepcopy(resource) if isinstance(resource, dict) else {}
        for key, value in patch.items():
            kind, name = _anchor(key)
            if kind == "condition":
                raise UnsupportedError(f"conditional anchor {key} outside a list element")
            if kind == "add" and name in out:
                continue
            out[name] = _merge(value, out.get(name))
        return out
    if isinstance(patch, list) and any(isinstance(e, dict) for e in patch):
        return _merge_list_of_maps(patch, resource)
    return copy.deepcopy(patch)


def _merge_list_of_maps(patch: list[Any], resource: Any) -> list[Any]:
    out = copy.deepcopy(resource) if isinstance(resource, list) else []
    for element in patch:
        if not isinstance(element, dict) or "name" in element or "(name)" not in element:
            raise UnsupportedError(f"list element without a (name) condition: {element}")
        if any(_anchor(k)[0] == "condition" for k in element if k != "(name)"):
            raise UnsupportedError(f"conditions other than (name): {element}")
        rest = {k: v for k, v in element.items() if k != "(name)"}
        pattern = element["(name)"]
        for i, item in enumerate(out):
            if isinstance(item, dict) and _wildcard(str(pattern), str(item.get("name", ""))):
                out[i] = _merge(rest, item)
    return out


# The engine.
def _context(obj: dict[str, Any], **variables: Any) -> dict[str, Any]:
    """The JSON context of a mutation (CREATE only) that has left the pod as `obj`."""
    return Request(obj).context(**variables)


def _list(value: Any) -> list[Any]:
    """engineutils.EvaluateList: a value that is not a list is a list of that one value."""
    return value if isinstance(value, list) else [value]


@dataclass
class Admission:
    """One CREATE admission of a Pod. Kyverno versions differ in when request.object, in the
    JSON context, catches up with the patched pod: after each rule, after each foreach
    declaration, both or neither. The chart must give the same pod in every case."""

    pod: dict[str, Any]
    refresh_after_rule: bool = True
    refresh_after_foreach: bool = True

    def mutate(self, policy: dict[str, Any]) -> dict[str, Any]:
        """The pod after every mutate rule of the policy, in order, each matched against the
        pod as the rules before it left it (cascading)."""
        spec = policy["spec"]
        if spec.get("applyRules", "All") != "All":
            raise UnsupportedError("applyRules")
        resource, seen = copy.deepcopy(self.pod), self.pod
        for rule in spec["rules"]:
            if "mutate" not in rule or not matches(rule, Request(resource)):
                continue
            if set(rule) - {"name", "match", "exclude", "preconditions", "mutate"}:
                raise UnsupportedError(f"rule fields {sorted(rule)}")
            if not conditions_hold(rule.get("preconditions"), _context(seen)):
                continue
            mutate = rule["mutate"]
            if set(mutate) - {"foreach", "patchesJson6902", "patchStrategicMerge"}:
                raise UnsupportedError(f"mutate fields {sorted(mutate)}")
            if "foreach" in mutate:
                resource = self._foreach(mutate["foreach"], resource, seen, {}, 0)
            else:
                resource = self._patch(mutate, resource, _context(seen))
            if self.refresh_after_rule:
                seen = resource
        return resource

    @staticmethod
    def _patch(holder: dict[str, Any], resource: dict, context: dict) -> dict:
        if "patchesJson6902" in holder:
            return _json_patch(holder["patchesJson6902"], resource, context)
        return _merge(substitute(holder["patchStrategicMerge"], context), resource)

    def _foreach(
        self, loops: list[dict], resource: dict, seen: dict, outer: dict, nesting: int
    ) -> dict:
        """Declarations in order; in each, the list is evaluated once and its elements are
        patched one after the other (`order: Descending` from the last)."""
        for loop in loops:
            fields = {"list", "order", "preconditions", "foreach"}
            if set(loop) - fields - {"patchesJson6902", "patchStrategicMerge"}:
                raise UnsupportedError(f"foreach fields {sorted(loop)}")
            order = loop.get("order", "Ascending")
            if order not in ("Ascending", "Descending"):
                raise UnsupportedError(f"order {order}")
            elements = list(enumerate(_list(jmespath.query(loop["list"], _context(seen, **outer)))))
            for index, element in reversed(elements) if order == "Descending" else elements:
                if element is None:
                    continue
                variables = {**outer, "element": element, "elementIndex": index}
                variables |= {f"element{nesting}": element, f"elementIndex{nesting}": index}
                context = _context(seen, **variables)
                if not conditions_hold(loop.get("preconditions"), context):
                    continue
                if "foreach" in loop:
                    resource = self._foreach(
                        loop["foreach"], resource, seen, variables, nesting + 1
                    )
                else:
                    resource = self._patch(loop, resource, context)
            if self.refresh_after_foreach:
                seen = resource
        return resource


VALIDATE_FIELDS = {"message", "deny", "foreach", "failureAction", "allowExistingViolations"}


def violations(
    policy: dict[str, Any],
    pod: dict[str, Any],
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    subresource: str = "",
) -> list[str]:
    """The validate rules the request fails (its pod as the mutations left it), with the
    container or volume. On an UPDATE, an enforced rule that the old pod, evaluated as if
    created, fails too is skipped unless allowExistingViolations is false (Kyverno >= 1.13)."""
    request = Request(pod, operation, old, subresource)
    failed = []
    for rule in policy["spec"]["rules"]:
        if "validate" not in rule:
            continue
        failures = _failures(rule, request)
        validate = rule["validate"]
        action = validate.get("failureAction", policy["spec"].get("validationFailureAction"))
        if (
            failures
            and operation == "UPDATE"
            and action == "Enforce"
            and validate.get("allowExistingViolations", True)
            and _failures(rule, request.as_created())
        ):
            continue
        failed += failures
    return failed


def _failures(rule: dict[str, Any], request: Request) -> list[str]:
    if not matches(rule, request):
        return []
    if set(rule) - {"name", "match", "exclude", "validate"}:
        raise UnsupportedError(f"rule fields {sorted(rule)}")
    validate = rule["validate"]
    if set(validate) - VALIDATE_FIELDS:
        raise UnsupportedError(f"validate fields {sorted(validate)}")
    failed = []
    context = request.context()
    if "deny" in validate and _denied(validate["deny"], context):
        failed.append(rule["name"])
    for loop in validate.get("foreach") or []:
        if set(loop) - {"list", "preconditions", "deny"}:
            raise UnsupportedError(f"foreach fields {sorted(loop)}")
        for index, element in enumerate(_list(jmespath.query(loop["list"], context))):
            variables = request.context(element=element, elementIndex=index)
            if element is None or not conditions_hold(loop.get("preconditions"), variables):
                continue
            if _denied(loop["deny"], variables):
                failed.append(f"{rule['name']}/{element.get('name')}")
    return failed


def _denied(deny: dict[str, Any], context: dict[str, Any]) -> bool:
    if set(deny) != {"conditions"}:
        raise UnsupportedError(f"deny {sorted(deny)}")
    return conditions_hold(deny["conditions"], context)
