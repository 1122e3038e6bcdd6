"""The models of tests/chart against what they model: RFC 6902's examples, Kyverno's
substitution, anchors, operators, matching and UPDATE handling, JMESPath as Kyverno evaluates
it, and the API server's defaulting."""

from __future__ import annotations

import pytest

from tests.chart import apiserver, jmespath
from tests.chart.kyverno import (
    PatchError,
    Request,
    UnsupportedError,
    apply_json_patch,
    conditions_hold,
    matches,
    substitute,
    violations,
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


def test_equals_compares_maps_and_lists_deeply():
    # Kyverno's Equals on a map or a list: reflect.DeepEqual (numbers are float64 either side).
    mount = {"name": "x", "readOnly": True}
    context = {"a": {"m": [mount]}}

    def holds(operator: str, value: object) -> bool:
        return conditions_hold(
            {"all": [{"key": "{{ a.m }}", "operator": operator, "value": value}]}, context
        )

    assert holds("Equals", [{"readOnly": True, "name": "x"}])
    assert holds("NotEquals", [{"name": "x", "readOnly": 1}])  # true is not 1
    assert holds("NotEquals", [{"name": "x*", "readOnly": True}])  # no wildcards
    assert holds("NotEquals", [mount, mount])
    assert holds("NotEquals", {"name": "x"})
    with pytest.raises(UnsupportedError):  # a null key: both false in Kyverno, the chart defaults
        conditions_hold(
            {"all": [{"key": "{{ a.n || `null` }}", "operator": "NotEquals", "value": {}}]}, context
        )


def test_keys_and_guarded_projections():
    data = {"v": [{"name": "a", "secret": {"name": "s"}}, {"name": "b", "configMap": {}}]}
    assert jmespath.query("v[].keys(@)[]", data) == ["name", "secret", "name", "configMap"]
    # A projection reading a field some items lack: the model fails it as a whole, as for a
    # missing key (whether Kyverno's does is not relied upon) ...
    with pytest.raises(jmespath.NotFoundError):
        jmespath.search("v[].secret.name", data)
    # ... and the chart filters on keys(@) first, which resolves the same either way.
    assert jmespath.query("v[?contains(keys(@), 'secret')].secret | [].name || `[]`", data) == ["s"]


def _rule(**resources: object) -> dict:
    return {
        "name": "r",
        "match": {"any": [{"resources": resources}]},
        "validate": {
            "deny": {
                "conditions": {
                    "all": [{"key": "{{ request.operation }}", "operator": "Equals", "value": "*"}]
                }
            }
        },
    }


def test_match_by_operation_and_subresource():
    pod = {"kind": "Pod", "metadata": {}}
    rule = _rule(kinds=["Pod"], operations=["UPDATE"])
    assert not matches(rule, Request(pod))
    assert matches(rule, Request(pod, "UPDATE", pod))
    assert not matches(rule, Request(pod, "UPDATE", pod, "ephemeralcontainers"))
    debug = _rule(kinds=["Pod/ephemeralcontainers"], operations=["UPDATE"])
    assert matches(debug, Request(pod, "UPDATE", pod, "ephemeralcontainers"))
    assert not matches(debug, Request(pod, "UPDATE", pod))


def test_an_update_is_not_refused_for_what_the_old_object_failed_already():
    def policy(**validate: object) -> dict:
        condition = {
            "key": "{{ request.object.bad || `false` }}",
            "operator": "Equals",
            "value": True,
        }
        rule = _rule(kinds=["Pod"], operations=["CREATE", "UPDATE"])
        rule["validate"] = {
            "failureAction": "Enforce",
            "deny": {"conditions": {"any": [condition]}},
            **validate,
        }
        return {"spec": {"rules": [rule]}}

    good, bad = {"kind": "Pod", "bad": False}, {"kind": "Pod", "bad": True}
    assert violations(policy(), bad) == ["r"]
    assert violations(policy(), bad, "UPDATE", good) == ["r"]
    assert violations(policy(), bad, "UPDATE", bad) == []  # allowExistingViolations: true
    assert violations(policy(allowExistingViolations=False), bad, "UPDATE", bad) == ["r"]
    audit = policy()
    audit["spec"]["rules"][0]["validate"]["failureAction"] = "Audit"
    assert violations(audit, bad, "UPDATE", bad) == ["r"]  # reported, as Kyverno reports it


def test_the_api_server_model_fills_in_what_kubernetes_defaults():
    # k8s.io/kubernetes pkg/apis/core/v1/defaults.go, for what pods here use; the injection
    # writes every one of these out for its sidecars (test_consistency checks it changes none).
    probe = {"httpGet": {"port": 80}}
    pod = {
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "app:1.0",
                    "ports": [{"containerPort": 80}],
                    "env": [
                        {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                    ],
                    "livenessProbe": probe,
                    "resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}},
                }
            ],
            "initContainers": [{"name": "i", "image": "tool", "resources": {"limits": {}}}],
            "volumes": [
                {"name": "c", "configMap": {"name": "c"}},
                {"name": "s", "secret": {"secretName": "s"}},
                {
                    "name": "d",
                    "downwardAPI": {"items": [{"path": "p", "fieldRef": {"fieldPath": "x"}}]},
                },
                {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
                {"name": "e", "emptyDir": {"sizeLimit": "1024Ki"}},
            ],
        }
    }
    spec = apiserver.defaulted(pod)["spec"]
    (c,) = spec["containers"]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert spec["initContainers"][0]["imagePullPolicy"] == "Always"  # no tag: latest
    assert spec["initContainers"][0]["resources"] == {}  # an empty map is not written back
    assert (c["terminationMessagePath"], c["terminationMessagePolicy"]) == (
        "/dev/termination-log",
        "File",
    )
    assert c["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"] == "v1"
    assert c["livenessProbe"] == {
        "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    # Requests default to limits; quantities come back in canonical form.
    assert c["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name, kind in (
        ("c", "configMap"),
        ("s", "secret"),
        ("d", "downwardAPI"),
        ("p", "projected"),
    ):
        assert volumes[name][kind]["defaultMode"] == 0o644
    assert volumes["d"]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"] == "v1"
    assert (
        volumes["p"]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600
    )
    assert volumes["e"]["emptyDir"]["sizeLimit"] == "1Mi"
    assert {k: spec[k] for k in apiserver.POD_DEFAULTS} == apiserver.POD_DEFAULTS
