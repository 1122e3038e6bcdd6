"""The Kyverno model of tests/chart against what it models: RFC 6902's examples, Kyverno's
substitution and anchors, JMESPath as Kyverno evaluates it."""

from __future__ import annotations

import pytest

from tests.chart import jmespath
from tests.chart.kyverno import (
    PatchError,
    UnsupportedError,
    apply_json_patch,
    conditions_hold,
    substitute,
)
from tests.chart.kyverno import _merge as merge


def op(name: str, path: str, *value: object) -> dict[str, object]:
    return {"op": name, "path": path, **({"value": value[0]} if value else {})}


@pytest.mark.parametrize(
    ("doc", "operation", "expected"),
    [  # RFC 6902, appendix A.1, A.2, A.3, A.4, A.5, A.10, A.16, and escaped names
        ({"foo": "bar"}, op("add", "/baz", "qux"), {"foo": "bar", "baz": "qux"}),
        ({"foo": ["bar", "baz"]}, op("add", "/foo/1", "qux"), {"foo": ["bar", "qux", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, op("remove", "/baz"), {"foo": "bar"}),
        ({"foo": ["bar", "qux", "baz"]}, op("remove", "/foo/1"), {"foo": ["bar", "baz"]}),
        ({"baz": "qux", "foo": "bar"}, op("replace", "/baz", "boo"), {"baz": "boo", "foo": "bar"}),
        ({"foo": "bar"}, op("add", "/child", {"g": {}}), {"foo": "bar", "child": {"g": {}}}),
        ({"foo": ["bar"]}, op("add", "/foo/-", ["abc", "def"]), {"foo": ["bar", ["abc", "def"]]}),
        ({"a/b": {"m~n": 1}}, op("replace", "/a~1b/m~0n", 2), {"a/b": {"m~n": 2}}),
    ],
)
def test_json_patch_follows_rfc_6902(doc, operation, expected):
    assert apply_json_patch(doc, [operation]) == expected


@pytest.mark.parametrize(
    "operation",
    [  # A.12: a missing parent; then indices out of range or malformed, `-` outside add
        op("add", "/baz/bat", "qux"),
        op("add", "/foo/3", "x"),
        op("remove", "/foo/01"),
        op("remove", "/foo/-"),
        op("remove", "/nothing"),
    ],
)
def test_json_patch_is_strict(operation):
    with pytest.raises(PatchError):
        apply_json_patch({"foo": ["a", "b"]}, [operation])


def test_substitution_like_kyverno():
    context = {"element": {"n": 3, "s": "{{ element.n }}"}, "elementIndex": 2}
    assert substitute("{{ element.n }}", context) == 3  # a whole value keeps its type
    assert substitute("/x/{{elementIndex}}/y", context) == "/x/2/y"
    # Substituted text is scanned again: why nothing of a pod is ever written into a patch.
    assert substitute("v: {{ element.s }}", context) == "v: 3"
    assert substitute("v: {{ element }}", context) == 'v: {"n":3,"s":"3"}'
    assert substitute("\\{{ kept }}", context) == "{{ kept }}"
    with pytest.raises(UnsupportedError):
        substitute("$(HOME)", context)


def test_jmespath_as_kyverno_evaluates_it():
    data = {"a": {"list": [{"name": "x", "v": 0}, {"name": "y"}]}, "caps": ["net_raw"]}
    with pytest.raises(jmespath.NotFoundError):
        jmespath.search("a.missing", data)
    assert jmespath.query("a.missing || `[]` | length(@)", data) == 0
    assert jmespath.query("a.list || `[]` | length(@)", data) == 2
    with pytest.raises(jmespath.NotFoundError):  # `||` inside a call is not retried
        jmespath.query("length(a.missing || `[]`)", data)
    assert jmespath.query("a.list[?name == 'y'] || `[]` | length(@)", data) == 1
    assert jmespath.query("a.list[0].v || `-1`", data) == 0  # 0 is true in JMESPath
    assert jmespath.query("caps[].to_upper(@)", data) == ["NET_RAW"]
    assert jmespath.query("a.list[5].name || ''", data) == ""
    assert jmespath.query("['a', 'b']", data) == ["a", "b"]
    assert not jmespath.equal(1, True)
    with pytest.raises(jmespath.ParseError):
        jmespath.query("a.list[*].name", data)


def test_strategic_merge_with_anchors():
    context = {"runAsNonRoot": False, "capabilities": {"drop": ["X"], "add": ["Y"]}}
    resource = {"spec": {"containers": [{"name": "a", "securityContext": context}, {"name": "b"}]}}
    patch = {
        "spec": {
            "containers": [
                {
                    "(name)": "a",
                    "securityContext": {
                        "+(runAsNonRoot)": True,
                        "+(seccompProfile)": {"type": "RuntimeDefault"},
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ]
        }
    }
    a, b = merge(patch, resource)["spec"]["containers"]
    assert a["securityContext"] == {
        "runAsNonRoot": False,
        "seccompProfile": {"type": "RuntimeDefault"},
        "capabilities": {"drop": ["ALL"], "add": ["Y"]},
    }
    assert b == {"name": "b"}
    with pytest.raises(UnsupportedError):
        merge({"spec": {"volumes": [{"name": "v"}]}}, resource)


def test_operators_compare_numbers_as_numbers_only():
    context = {"x": 101}
    assert conditions_hold(
        {"any": [{"key": "{{ x }}", "operator": "Equals", "value": 101}]}, context
    )
    with pytest.raises(UnsupportedError):  # AnyIn compares fmt.Sprint strings: 1e+06
        conditions_hold({"any": [{"key": "{{ x }}", "operator": "AnyIn", "value": [101]}]}, context)
