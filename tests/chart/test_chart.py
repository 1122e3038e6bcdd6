"""The chart as Helm renders it: lint, golden manifests, every object valid for Kubernetes or
Kyverno, values.schema.json, and what the objects must agree on with the injector's settings."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.kyverno import v1, v2

from intercept_proxy.authz.service import denial_body
from intercept_proxy.injector.pod import envoy_container, proxy_init_container
from intercept_proxy.injector.settings import SettingsError, canonical_quantity
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.pki.ca import CertificateAuthority
from intercept_proxy.policy.engine import Decision
from intercept_proxy.policy.model import KEYS, parse_policy
from tests.chart import render
from tests.chart.test_consistency import refusals
from tests.golden import assert_golden_text

KYVERNO_MODELS = {
    ("kyverno.io/v1", "ClusterPolicy"): v1.ClusterPolicy,
    ("kyverno.io/v2", "PolicyException"): v2.PolicyException,
}
GENERATED_CA = re.compile(r"^(  tls\.(crt|key)): \S+$", re.MULTILINE)


def settings(case: str) -> Any:
    return settings_from_values(render.values(case), render.release(case))


def policies(case: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render.objects(case) if o["kind"] == "ClusterPolicy"}


@pytest.mark.parametrize("case", render.CASES)
def test_helm_lint_strict_is_clean(case):
    report = helm_python.lint(
        render.CHART_DIR, render.CASES[case][1], strict=True, namespace=render.NAMESPACE
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", render.CASES)
def test_rendered_manifests_golden(case):
    parts = []
    for path, text in sorted(render.rendered(case).items()):
        if path != render.NOTES and text.strip():
            # genCA makes a new CA at every rendering: its bytes are checked below, not here.
            text = GENERATED_CA.sub(r"\1: <genCA>", text).strip()
            parts.append(f"# Source: {path}\n{text}\n")
    assert_golden_text(f"chart/{case}.yaml", "---\n".join(parts))
    assert_golden_text(f"chart/{case}.NOTES.txt", render.rendered(case)[render.NOTES])


@pytest.mark.parametrize("case", render.CASES)
def test_every_object_is_valid(case):
    for obj in render.objects(case):
        model = KYVERNO_MODELS.get((obj["apiVersion"], obj["kind"]))
        if model is not None:
            model.model_validate_json(json.dumps(obj), strict=True, extra="forbid")
        elif obj["apiVersion"] == "cert-manager.io/v1":
            assert obj["kind"] == "Certificate"  # no schema here: checked field by field below
        else:
            kubernetes_validate.validate(obj, "1.31", strict=True)


def test_the_kyverno_models_refuse_unknown_fields_and_wrong_types():
    policy = render.find("default", "ClusterPolicy", "clone-configmaps")
    broken = json.loads(json.dumps(policy))
    broken["spec"]["rules"][0]["generate"]["synchronise"] = True
    with pytest.raises(pydantic.ValidationError, match="synchronise"):
        v1.ClusterPolicy.model_validate_json(json.dumps(broken), strict=True, extra="forbid")
    broken = json.loads(json.dumps(policy))
    broken["spec"]["rules"][0]["generate"]["synchronize"] = "yes"
    with pytest.raises(pydantic.ValidationError, match="synchronize"):
        v1.ClusterPolicy.model_validate_json(json.dumps(broken), strict=True, extra="forbid")


def _json_patches(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        found = [(path, node["patchesJson6902"])] if "patchesJson6902" in node else []
        for k, v in node.items():
            found += _json_patches(v, f"{path}/{k}")
        return found
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _json_patches(v, f"{path}/{i}")]
    return []


@pytest.mark.parametrize("case", render.CASES)
def test_json_patches_pass_kyvernos_policy_checks(case):
    # As Kyverno checks a policy when it is created (validateJSONPatch): the patch, its
    # variables replaced, is a list of add, remove or replace operations; element variables
    # appear inside foreach only.
    patches = _json_patches(render.find(case, "ClusterPolicy", "inject-proxy"))
    unmount_token = not render.values(case)["serviceAccountToken"]["automount"]
    assert len(patches) == 12 + 3 * unmount_token
    for where, text in patches:
        text = re.sub(r"\{\{\s*elementIndex\d*\s*\}\}", "0", text)
        operations = yaml.safe_load(re.sub(r"\{\{[^{}]*\}\}", "placeholder", text))
        assert operations and all(op["op"] in ("add", "remove", "replace") for op in operations)
        assert all(op["path"].startswith("/") for op in operations)
        if "{{" in text:
            assert "/foreach/" in where


def test_the_envoy_bootstrap_is_the_injectors():
    # Computed in Python (intercept_proxy.xds.bootstrap), so kept in the chart as a file.
    bootstrap = (render.CHART_DIR / "files" / "envoy-bootstrap.json").read_text().strip()
    assert bootstrap == envoy_container(settings("default"))["command"][2], (
        "regenerate files/envoy-bootstrap.json: intercept envoy bootstrap --node-id "
        "intercept-sidecar | python -c 'import json, sys; "
        "print(json.dumps(json.load(sys.stdin), sort_keys=True))'"
    )


def test_the_schema_covers_every_value():
    schema = render.chart().schema

    def walk(value: Any, node: dict[str, Any], where: str) -> None:
        node = schema["definitions"][node["$ref"].split("/")[-1]] if "$ref" in node else node
        if isinstance(value, dict) and "properties" in node:
            assert node["additionalProperties"] is False, where
            assert set(value) <= set(node["properties"]), f"{where}: {set(value)}"
            for key, sub in value.items():
                walk(sub, node["properties"][key], f"{where}.{key}")
        elif isinstance(value, list):
            assert "items" in node, where
            for item in value:
                walk(item, node["items"], f"{where}[]")
        else:
            assert "type" in node or "enum" in node, where

    walk(render.chart().values, schema, "values")
    policy = schema["properties"]["policy"]["properties"]["default"]["properties"]
    assert set(policy) == set(KEYS) - {"rego_modules"}  # the chart mounts policy.yaml only


BAD_VALUES = [
    ({"policy": {"podOverride": "maybe"}}, "/policy/podOverride"),
    ({"capture": {"tlsPorts": ["443"]}}, "/capture/tlsPorts/0"),
    ({"capture": {"httpPorts": [15001]}}, "/capture/httpPorts/0"),
    ({"capture": {"tlsPorts": [70000]}}, "/capture/tlsPorts/0"),
    ({"capture": {"allowedCidrs": ["10.0.0.0"]}}, "/capture/allowedCidrs/0"),
    ({"ca": {"mode": "vault"}}, "/ca/mode"),
    ({"ca": {"mode": "certManager"}}, "/ca/certManager/issuerRef/name"),
    ({"kyverno": {"validationFailureAction": "Block"}}, "/kyverno/validationFailureAction"),
    ({"envoy": {"uid": 0}}, "/envoy/uid"),
    ({"agent": {"certValidityHours": 0}}, "/agent/certValidityHours"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"tag": None}}, "/image"),
    ({"image": {"repository": "intercept-proxy:0.1.0"}}, "/image/repository"),
    ({"policy": {"default": {"allowed_domain": ["pypi.org"]}}}, "/policy/default"),
    ({"networkPolicy": {"enable": False}}, "/networkPolicy"),
    ({"agent": {"resources": {"limits": {"cpu": "0.5"}}}}, "/agent/resources/limits/cpu"),
    ({"envoy": {"resources": {"requests": {"memory": 1.5}}}}, "/envoy/resources/requests/memory"),
    ({"clone": {"namespaceSelector": {"matchLabel": {}}}}, "/clone/namespaceSelector"),
]


@pytest.mark.parametrize(("overrides", "where"), BAD_VALUES)
def test_the_schema_refuses_bad_values(overrides, where):
    with pytest.raises(helm_python.HelmValuesError, match=f"at '{where}'"):
        render.chart().render(overrides, name="x", namespace=render.NAMESPACE)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [  # What the injector refuses too (InjectorSettings).
        ({"agent": {"uid": 101}}, "envoy.uid and agent.uid must differ"),
        ({"capture": {"httpPorts": [80, 443]}}, "both list port 443"),
    ],
)
def test_rendering_fails_on_values_the_injector_refuses(overrides, message):
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render.chart().render(overrides, name="x", namespace=render.NAMESPACE)
    with pytest.raises(SettingsError):
        settings_from_values(overrides, "x")


QUANTITIES = [0, "0Mi", "1000m", "1500m", 2000, "2000", "1000000", "1024Mi", "1048576Ki", "1000Ki"]


def test_quantities_are_written_as_the_api_server_writes_them():
    # Kubernetes' canonical forms (resource.Quantity.String()).
    expected = ["0", "0", "1", "1500m", "2k", "2k", "1M", "1Gi", "1Gi", "1000Ki"]
    assert [canonical_quantity(q, "q") for q in QUANTITIES] == expected
    limits = {f"r{i}": q for i, q in enumerate(QUANTITIES)}
    values = {"proxyInit": {"resources": {"requests": {"r0": "5"}, "limits": limits}}}
    text = render.chart().render(values, name="x", namespace=render.NAMESPACE)
    policy = yaml.safe_load(text["intercept-proxy/templates/validate-policy.yaml"])
    rendered = policy["spec"]["rules"][0]["validate"]["deny"]["conditions"]["any"][0]["value"]
    injected = proxy_init_container(settings_from_values(values, "x"))
    assert rendered["resources"] == injected["resources"]
    # Helm merges maps: the chart's default limits stay beside these.
    limits = injected["resources"]["limits"]
    assert limits == {**limits, **{f"r{i}": q for i, q in enumerate(expected)}}
    assert injected["resources"]["requests"] == {
        **limits,
        "cpu": "10m",
        "memory": "32Mi",
        "r0": "5",
    }


@pytest.mark.parametrize("case", render.CASES)
def test_the_default_policy_is_a_valid_policy(case):
    configmap = render.find(case, "ConfigMap", "policy")
    assert configmap["metadata"]["name"] == settings(case).policy_config_map
    assert configmap["metadata"]["namespace"] == render.NAMESPACE
    policy = parse_policy(configmap["data"]["policy.yaml"], modules=False)
    default = render.values(case)["policy"]["default"]
    assert policy.to_data() == parse_policy(yaml.safe_dump(default), modules=False).to_data()


@pytest.mark.parametrize("case", render.CASES)
def test_the_clones_are_what_the_injected_pods_mount(case):
    s = settings(case)
    rules = policies(case)[f"{render.release(case)}-clone-configmaps"]["spec"]["rules"]
    cloned = {(r["generate"]["kind"], r["generate"]["name"]) for r in rules}
    expected = {("ConfigMap", s.policy_config_map)}
    if s.ca_mode == "secret":
        expected.add(("Secret", s.ca_secret))
    assert cloned == expected
    selector = render.values(case)["clone"]["namespaceSelector"]
    for rule in rules:
        # Triggered by the namespace, existing ones included: a synchronized clone goes with its
        # trigger, and must live as long as the namespace (not as one of its pods).
        (match,) = rule["match"]["any"]
        assert match["resources"]["kinds"] == ["Namespace"]
        assert match["resources"].get("selector", {}) == selector
        assert rule["exclude"]["any"] == [
            {"resources": {"kinds": ["Namespace"], "names": [render.NAMESPACE]}}
        ]
        generate = rule["generate"]
        assert generate["clone"] == {"namespace": render.NAMESPACE, "name": generate["name"]}
        assert generate["synchronize"] is True
        assert generate["generateExisting"] is True
        assert generate["namespace"] == "{{ request.object.metadata.name }}"
    assert policies(case)[f"{render.release(case)}-clone-configmaps"]["spec"].get(
        "background", True
    )


def test_the_network_policy_is_not_synchronized():
    # Its trigger is a pod: synchronized, it would go with that pod.
    (rule,) = render.find("default", "ClusterPolicy", "network-policy")["spec"]["rules"]
    assert rule["match"]["any"][0]["resources"]["kinds"] == ["Pod"]
    assert rule["generate"]["synchronize"] is False


def test_a_secret_ca_is_made_once_and_loads_in_the_agent(tmp_path: Path):
    secret = render.find("secret-ca", "Secret", "ca")
    assert secret["metadata"]["name"] == settings("secret-ca").ca_secret
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert secret["type"] == "kubernetes.io/tls"
    for key in ("tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(secret["data"][key]))
    ca = CertificateAuthority.load(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert "sandbox" in ca.cert.subject.rfc4514_string()
    assert "lookup" in (render.CHART_DIR / "templates" / "ca-secret.yaml").read_text()


def test_cert_manager_issues_the_ca_the_pods_mount():
    certificate = render.find("cert-manager", "Certificate", "ca")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    assert spec["isCA"] is True
    assert spec["secretName"] == settings("cert-manager").ca_secret
    assert spec["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert set(spec) == {"isCA", "commonName", "secretName", "privateKey", "issuerRef"}
    for case in ("default", "secret-ca"):
        assert not [o for o in render.objects(case) if o["kind"] == "Certificate"]
    assert not [o for o in render.objects("cert-manager") if o["kind"] == "Secret"]


@pytest.mark.parametrize("case", render.CASES)
def test_the_network_policy_closes_the_api_and_metadata(case):
    values = render.values(case)["networkPolicy"]
    name = f"{render.release(case)}-network-policy"
    if not values["enabled"]:
        assert name not in policies(case)
        return
    (rule,) = policies(case)[name]["spec"]["rules"]
    generate = rule["generate"]
    network_policy = {
        "apiVersion": generate["apiVersion"],
        "kind": generate["kind"],
        "metadata": {
            "name": generate["name"],
            "namespace": "agents",
            **generate["data"]["metadata"],
        },
        "spec": generate["data"]["spec"],
    }
    kubernetes_validate.validate(network_policy, "1.31", strict=True)
    spec = network_policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"intercept-proxy/enabled": "true"}}
    assert spec["policyTypes"] == ["Egress"]
    (egress,) = spec["egress"]
    blocked = values["kubernetesApiCidrs"] + values["metadataCidrs"]
    by_cidr = {b["ipBlock"]["cidr"]: b["ipBlock"].get("except", []) for b in egress["to"]}
    assert by_cidr == {
        "0.0.0.0/0": [c for c in blocked if ":" not in c],
        "::/0": [c for c in blocked if ":" in c],
    }
    assert rule["exclude"]["any"][0]["resources"]["namespaceSelector"] == {
        "matchLabels": {"intercept-proxy/network-policy": "disabled"}
    }


@pytest.mark.parametrize("case", render.CASES)
def test_the_policy_exception_names_only_the_configured_rules(case):
    values = render.values(case)["kyverno"]
    exceptions = [o for o in render.objects(case) if o["kind"] == "PolicyException"]
    if not values["policyException"]["enabled"]:
        assert exceptions == []
        return
    (exception,) = exceptions
    assert exception["metadata"]["namespace"] == values["namespace"]
    assert exception["spec"]["exceptions"] == values["policyException"]["exceptions"]
    (match,) = exception["spec"]["match"]["any"]
    assert match["resources"]["selector"] == {"matchLabels": {"intercept-proxy/enabled": "true"}}


@pytest.mark.parametrize("case", render.CASES)
def test_every_validate_rule_has_the_failure_action(case):
    # Kyverno >= 1.13's per-rule fields, not the deprecated spec-level ones.
    expected = render.values(case)["kyverno"]["validationFailureAction"]
    rules = [r for p in policies(case).values() for r in p["spec"]["rules"] if "validate" in r]
    assert len(rules) == 8
    for rule in rules:
        assert rule["validate"]["failureAction"] == expected, rule["name"]
    for policy in policies(case).values():
        assert not {"validationFailureAction", "failurePolicy"} & set(policy["spec"])
    inject = render.find(case, "ClusterPolicy", "inject-proxy")
    assert inject["spec"]["webhookConfiguration"] == {"failurePolicy": "Fail"}


@pytest.mark.parametrize("case", render.CASES)
def test_pods_are_validated_on_creation_and_on_every_change(case):
    validate = render.find(case, "ClusterPolicy", "validate-pods")
    # Admission only: a background scan reads pods with integers where admission has floats.
    assert validate["spec"]["background"] is False
    for rule in validate["spec"]["rules"]:
        (match,) = rule["match"]["any"]
        assert match["resources"]["operations"] == ["CREATE", "UPDATE"], rule["name"]
    changes = render.find(case, "ClusterPolicy", "validate-pod-changes")
    # Subresources and old objects: admission only.
    assert changes["spec"]["background"] is False
    kinds = {
        r["name"]: r["match"]["any"][0]["resources"]["kinds"] for r in changes["spec"]["rules"]
    }
    assert kinds == {
        "interceptor-unchanged": ["Pod"],
        "no-ephemeral-containers": ["Pod/ephemeralcontainers"],
    }


@pytest.mark.parametrize("case", render.CASES)
def test_the_cleanup_hook_deletes_exactly_the_cluster_policies(case):
    objects = render.objects(case)
    hooks = [o for o in objects if "-cleanup" in o["metadata"]["name"]]
    if not render.values(case)["cleanup"]["enabled"]:
        assert hooks == []
        return
    assert {o["kind"] for o in hooks} == {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"
    }  # fmt: skip
    for hook in hooks:
        assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    names = sorted(policies(case))
    role = render.find(case, "ClusterRole", "cleanup")
    role["rules"][0]["resourceNames"].sort()
    assert role["rules"] == [
        {
            "apiGroups": ["kyverno.io"],
            "resources": ["clusterpolicies"],
            "resourceNames": names,
            "verbs": ["delete"],
        }
    ]
    job = render.find(case, "Job", "cleanup")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    # registry.k8s.io/kubectl's entrypoint is kubectl: arguments only.
    assert container["image"].rpartition(":")[0].endswith("kubectl")
    assert "command" not in container
    assert container["args"][:2] == ["delete", "clusterpolicy"]
    assert sorted(c for c in container["args"][2:] if not c.startswith("--")) == names


@pytest.mark.parametrize("case", render.CASES)
def test_every_image_is_pinned(case):
    images = [settings(case).image, settings(case).envoy_image]
    for obj in render.objects(case):
        spec = obj.get("spec", {})
        spec = spec.get("template", {}).get("spec", spec)
        images += [c["image"] for c in spec.get("containers", [])]
    assert len(images) >= 2
    for image in images:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", image


@pytest.mark.parametrize("case", render.CASES)
def test_the_helm_test_pod_is_intercepted_and_expects_the_policys_403(case):
    pods = [o for o in render.objects(case) if o["kind"] == "Pod"]
    if not render.values(case)["helmTest"]["enabled"]:
        assert pods == []
        return
    (pod,) = pods
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["intercept-proxy/enabled"] == "true"
    assert refusals(case, pod) == []  # injected, then admitted
    script = pod["spec"]["containers"][0]["command"][-1]
    assert '[ "$code" != 403 ]' in script
    pattern = re.search(r"grep -q '([^']+)'", script).group(1)
    assert pattern in denial_body(Decision(False, "no_rule", "not allowed"), "id")


@pytest.mark.parametrize("case", render.CASES)
def test_kyverno_may_generate_what_the_policies_generate(case):
    role = render.find(case, "ClusterRole", "kyverno-generate")
    assert (
        role["metadata"]["labels"]["rbac.kyverno.io/aggregate-to-background-controller"] == "true"
    )
    granted = {
        (g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    generated = {
        (rule["generate"]["apiVersion"].rpartition("/")[0], rule["generate"]["kind"].lower() + "s")
        for policy in policies(case).values()
        for rule in policy["spec"]["rules"]
        if "generate" in rule
    }
    assert granted == {(g, r.replace("networkpolicys", "networkpolicies")) for g, r in generated}


def test_notes_name_the_next_steps():
    notes = render.rendered("default")[render.NOTES]
    for step in (
        'intercept-proxy/enabled: "true"',
        "kubectl logs POD -c proxy-init",
        "kubectl logs POD -c intercept-agent",
        "intercept-proxy/opa-data",
        "helm test intercept-proxy",
        "kubernetesApiCidrs is empty",
        "Kyverno (>= 1.13)",
        "pod-security.kubernetes.io/enforce=privileged",
        "needs a runAsUser",
    ):
        assert step in notes
    assert "kubernetesApiCidrs is empty" not in render.rendered("cert-manager")[render.NOTES]


PORTS = (0, 1, 52, 53, 54, 80, 443, 8080, 14999, 15000, 15001, 15002, 15020, 15022, 15053, 15099)
PORTS += (15100, 65535, 65536)


@pytest.mark.parametrize("key", ["tlsPorts", "httpPorts", "inboundPorts"])
def test_the_schema_and_proxy_init_accept_the_same_ports(key):
    """One rule, applied everywhere: a port helm accepts is one proxy-init accepts in the pod
    (53 passed the chart and the injector once, and failed in every pod at start-up)."""
    import jsonschema

    chart = render.chart()
    schema = jsonschema.Draft7Validator(chart.schema)
    # The two captured lists apart (a port in both is refused when rendering, see above).
    others = {"tlsPorts": [444], "httpPorts": [81]}
    for port in PORTS:
        capture = {**others, key: [port]}
        helm = schema.is_valid({**chart.values, "capture": chart.values["capture"] | capture})
        try:
            settings_from_values({"capture": capture}, "x")
            injector = True
        except SettingsError:
            injector = False
        assert helm == injector, f"capture.{key}: [{port}]: helm {helm}, proxy-init {injector}"
