"""The chart as the real Helm renders it: lint, golden manifests, values.schema.json, and what the
objects must agree on with the injector's settings. (Kyverno applies its policies in
test_consistency; the API server checks every object in tests/kubernetes.)"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from intercept_proxy.agent.clients import CLIENT_SELECTOR
from intercept_proxy.authz.service import denial_body
from intercept_proxy.identities import MAX_ID
from intercept_proxy.injector import schema
from intercept_proxy.injector.pod import proxy_init_container
from intercept_proxy.injector.settings import SettingsError
from intercept_proxy.injector.values import settings_from_values
from intercept_proxy.netfilter.config import CaptureConfig, CaptureConfigError
from intercept_proxy.pki.ca import CertificateAuthority
from intercept_proxy.policy.engine import Decision
from intercept_proxy.policy.model import KEYS, parse_policy
from tests.chart import kyverno_cli, render
from tests.golden import assert_golden_text

SCHEMA = json.loads((render.CHART_DIR / "values.schema.json").read_text())
CHART_VALUES = yaml.safe_load((render.CHART_DIR / "values.yaml").read_text())
GENERATED_CA = re.compile(r"^( +(tls\.(crt|key)|ca\.crt|checksum/ca)): .+$", re.MULTILINE)


def settings(case: str) -> Any:
    return settings_from_values(render.given(case), render.release(case))


def policies(case: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render.objects(case) if o["kind"] == "ClusterPolicy"}


def generating(case: str, base: str) -> dict[str, Any]:
    """The generating ClusterPolicy `<release>-<base>-<digest of its rules>`."""
    pattern = re.compile(rf"{re.escape(render.release(case))}-{base}-[0-9a-f]{{8}}")
    (found,) = [p for name, p in policies(case).items() if pattern.fullmatch(name)]
    return found


def kinds_of(overrides: dict[str, Any], release: str = "sandbox") -> dict[str, list[dict]]:
    """What `helm install` would create with these values, by kind."""
    out: dict[str, list[dict]] = {}
    for obj in yaml.safe_load_all(render.install_dry_run(release, overrides)["manifest"]):
        if obj:
            out.setdefault(obj["kind"], []).append(obj)
    return out


@pytest.mark.parametrize("case", render.CASES)
def test_helm_lint_strict_is_clean(case):
    out = render.helm("lint", "--strict", str(render.CHART_DIR), "-n", render.NAMESPACE,
                      values=render.given(case))  # fmt: skip
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("case", render.CASES)
def test_rendered_manifests_golden(case):
    parts = []
    for path, text in sorted(render.rendered(case).items()):
        if text.strip():
            # genCA makes a new CA at every rendering: its bytes are checked below, not here.
            text = GENERATED_CA.sub(r"\1: <genCA>", text).strip()
            parts.append(f"# Source: {path}\n{text}\n")
    assert_golden_text(f"chart/{case}.yaml", "---\n".join(parts))
    assert_golden_text(f"chart/{case}.NOTES.txt", render.notes(case))


def test_the_schema_covers_every_value():
    schema = SCHEMA

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

    walk(CHART_VALUES, schema, "values")
    policy = schema["properties"]["policy"]["properties"]["default"]["properties"]
    assert set(policy) == set(KEYS) - {"rego_modules"}  # the chart mounts policy.yaml only


def test_the_schema_is_rendered_from_its_declaration():
    text = schema.chart_schema()
    path = render.CHART_DIR / "values.schema.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, (
        f"{schema.PATH} is stale: regenerate it with UPDATE_GOLDEN=1 (or "
        "python -m intercept_proxy.injector.schema) and review the diff"
    )


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
    ({"agent": {"resources": {"limits": {"cpu": "half"}}}}, "/agent/resources/limits/cpu"),
    ({"envoy": {"resources": {"requests": {"memory": True}}}}, "/envoy/resources/requests/memory"),
    ({"clone": {"namespaceSelector": {"matchLabel": {}}}}, "/clone/namespaceSelector"),
    ({"capture": {"mode": "sidecar"}}, "/capture/mode"),
    (  # a secret comes from the agent's environment (the Secret <release>-credentials) only
        {"policy": {"default": {"credentials": [{"host": "a.test", "file": "/k"}]}}},
        "/policy/default/credentials/0",
    ),
    (
        {"policy": {"default": {"rate_limits": [{"host": "a.test", "requests_per_minute": 0}]}}},
        "/policy/default/rate_limits/0/requests_per_minute",
    ),
]


@pytest.mark.parametrize(("overrides", "where"), BAD_VALUES)
def test_the_schema_refuses_bad_values(overrides, where):
    """Helm refuses, and so does `intercept inject`, naming the same value."""
    with pytest.raises(render.HelmError, match=f"at '{where}'"):
        render.install_dry_run("x", overrides)
    if overrides == {"ca": {"mode": "certManager"}}:
        return  # refused for the chart's empty issuer, a value the injector does not read
    named = re.sub(r"/(\d+)", r"[\1]", where).replace("/", ".").lstrip(".")
    with pytest.raises(SettingsError, match=f"^values: {re.escape(named)}[.:]"):
        settings_from_values(overrides, "x")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [  # What the injector refuses too (InjectorSettings).
        ({"agent": {"uid": 101}}, "envoy.uid and agent.uid must differ"),
        ({"capture": {"httpPorts": [80, 443]}}, "both list port 443"),
    ],
)
def test_rendering_fails_on_values_the_injector_refuses(overrides, message):
    with pytest.raises(render.HelmError, match=re.escape(message)):
        render.install_dry_run("x", overrides)
    with pytest.raises(SettingsError):
        settings_from_values(overrides, "x")


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        (
            {"namespace": render.NAMESPACE},
            f"gateway.namespace: {render.NAMESPACE} is the release's",
        ),
        (
            {"autoscaling": {"enabled": False}, "replicas": 1},
            "minAvailable (1) must be below the fewest replicas (1)",
        ),
        ({"podDisruptionBudget": {"minAvailable": 2}}, "must be below the fewest replicas (2)"),
        (
            {"autoscaling": {"minReplicas": 4, "maxReplicas": 3}},
            "minReplicas (4) is above maxReplicas (3)",
        ),
        # The operator's Secret is in a namespace that exists before the install.
        ({"ca": {"mode": "secret"}}, "gateway.ca.mode secret needs gateway.createNamespace: false"),
        (
            {"ca": {"mode": "certManager", "certManager": {"issuerRef": {"name": "corp"}}}},
            "kyverno.serviceAccounts.backgroundController is needed in gateway.ca.mode",
        ),
    ],
)
def test_rendering_fails_on_a_gateway_that_could_not_work(gateway, message):
    values: dict = {"gateway": {"enabled": True, **gateway}}
    if gateway.get("ca", {}).get("mode") == "certManager":  # no account to bind the Role to
        values["kyverno"] = {"serviceAccounts": {"backgroundController": ""}}
    with pytest.raises(render.HelmError, match=re.escape(message)):
        render.install_dry_run("x", values)


def test_resources_are_the_values_as_given():
    # Kept as written (the API server is their judge); Helm merges maps: the chart's default
    # limits stay beside these.
    values = {"proxyInit": {"resources": {"requests": {"cpu": "0.5"}, "limits": {"cpu": 2}}}}
    policy = yaml.safe_load(
        render._sources(render.install_dry_run("x", values)["manifest"])[
            "intercept-proxy/templates/inject-policy.yaml"
        ]
    )
    (rule,) = [r for r in policy["spec"]["rules"] if r["name"] == "add-sidecars"]
    patches = yaml.safe_load(rule["mutate"]["patchesJson6902"])
    injected = proxy_init_container(settings_from_values(values, "x"))
    assert patches[0]["value"]["resources"] == injected["resources"]
    assert injected["resources"] == {
        "requests": {"cpu": "0.5", "memory": "32Mi"},
        "limits": {"cpu": 2, "memory": "128Mi"},
    }


@pytest.mark.parametrize("case", render.CASES)
def test_the_default_policy_is_a_valid_policy(case):
    configmap = render.find(case, "ConfigMap", "policy")
    assert configmap["metadata"]["name"] == settings(case).policy_config_map
    assert configmap["metadata"]["namespace"] == render.NAMESPACE
    policy = parse_policy(configmap["data"]["policy.yaml"], modules=False)
    default = render.values(case)["policy"]["default"]
    assert policy.to_data() == parse_policy(yaml.safe_dump(default), modules=False).to_data()


def test_credentials_rate_limits_and_budgets_reach_the_agents_policy():
    default = {
        "unrestricted_domains": ["api.anthropic.com"],
        "credentials": [{"host": "api.anthropic.com", "header": "x-api-key", "env": "API_KEY"}],
        "rate_limits": [{"host": "api.anthropic.com", "requests_per_minute": 60}],
        "budgets": [{"host": "api.anthropic.com", "upload_bytes": 1000}],
    }
    release = render.install_dry_run("x", {"policy": {"default": default}})
    policy = parse_policy(render.find_in(release, "ConfigMap", "policy")["data"]["policy.yaml"])
    assert [(c.host, c.header, c.env) for c in policy.credentials] == [
        ("api.anthropic.com", "x-api-key", "API_KEY")
    ]
    assert [(r.host, r.requests_per_minute) for r in policy.rate_limits] == [
        ("api.anthropic.com", 60)
    ]
    assert [(b.host, b.requests, b.upload_bytes) for b in policy.budgets] == [
        ("api.anthropic.com", None, 1000)
    ]


@pytest.mark.parametrize("case", render.CASES)
def test_the_clones_are_what_the_injected_pods_mount(case):
    s = settings(case)
    rules = generating(case, "clone")["spec"]["rules"]
    # The rule a CA Secret issued later triggers (certManager): its own test below.
    rules = [r for r in rules if "foreach" not in r["generate"]]
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
        # Never into the excluded namespaces: whoever reads Secrets there would get the CA key.
        # Nor into the gateway's, which holds objects of its own.
        values = render.values(case)
        excluded = [render.NAMESPACE, *values["clone"]["excludedNamespaces"]]
        excluded += [values["gateway"]["namespace"]] if values["gateway"]["enabled"] else []
        assert rule["exclude"]["any"] == [
            {"resources": {"kinds": ["Namespace"], "names": excluded}}
        ]
        generate = rule["generate"]
        assert generate["clone"] == {"namespace": render.NAMESPACE, "name": generate["name"]}
        assert generate["synchronize"] is True
        assert generate["generateExisting"] is True
        assert generate["namespace"] == "{{ request.object.metadata.name }}"


def test_a_ca_issued_later_is_cloned_when_it_appears():
    """cert-manager issues the CA's Secret after the policy: Kyverno clones no source that
    appears later, so the Secret itself triggers its copies into the selected namespaces."""
    rules = generating("cert-manager", "clone")["spec"]["rules"]
    (rule,) = [r for r in rules if "foreach" in r["generate"]]
    assert rule["match"]["any"][0]["resources"] == {
        "kinds": ["Secret"], "names": ["agents-ca"], "namespaces": [render.NAMESPACE]
    }  # fmt: skip
    (call,) = rule["context"]
    assert call["apiCall"]["urlPath"] == "/api/v1/namespaces?labelSelector=sandbox%3Dagents"
    (each,) = rule["generate"]["foreach"]
    assert each["clone"] == {"namespace": render.NAMESPACE, "name": "agents-ca"}
    (condition,) = each["preconditions"]["all"]
    assert condition["value"][0] == render.NAMESPACE


def test_the_network_policy_lives_with_its_namespace():
    # Triggered by the namespace and synchronized: it goes with the release, not with a pod.
    (rule,) = generating("default", "egress")["spec"]["rules"]
    assert rule["match"]["any"][0]["resources"]["kinds"] == ["Namespace"]
    assert rule["generate"]["synchronize"] is True
    assert rule["generate"]["generateExisting"] is True


def test_a_generating_policy_is_renamed_when_its_rules_change():
    """Kyverno refuses to change or remove the rules of a synchronized generating policy: an
    upgrade that changes them installs a policy of another name, which adopts the clones."""

    def names(overrides: dict[str, Any]) -> set[str]:
        return {p["metadata"]["name"] for p in kinds_of(overrides)["ClusterPolicy"]}

    before = names({})
    assert names({"image": {"tag": "9.9.9"}}) == before
    selector = {"matchLabels": {"team": "a"}}
    changed = names({"clone": {"namespaceSelector": selector}})
    (gone,) = before - changed
    (new,) = changed - before
    assert gone.startswith("sandbox-clone-") and new.startswith("sandbox-clone-")
    egress = names({"networkPolicy": {"metadataCidrs": ["169.254.169.254/32"]}})
    assert {n.rpartition("-")[0] for n in before - egress} == {"sandbox-egress"}
    for name in before | changed | egress:
        assert len(name) <= 63, name


def test_a_secret_ca_is_made_once_and_loads_in_the_agent(tmp_path: Path):
    secret = render.find("secret-ca", "Secret", "ca")
    assert secret["metadata"]["name"] == settings("secret-ca").ca_secret
    # No resource-policy keep: an uninstall deletes the CA key with the release.
    assert "annotations" not in secret["metadata"]
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
    # Ten years: a running pod keeps the CA it started with (not cert-manager's 90 days, which
    # a pod running 30 days past a renewal would outlive).
    assert spec["duration"] == "87600h"
    assert set(spec) == {
        "isCA", "commonName", "secretName", "duration", "privateKey", "issuerRef"
    }  # fmt: skip
    for case in ("default", "secret-ca"):
        assert not [o for o in render.objects(case) if o["kind"] == "Certificate"]
    assert not [o for o in render.objects("cert-manager") if o["kind"] == "Secret"]


@pytest.mark.parametrize("case", ["gateway", "gateway-cert-manager"])
def test_the_gateway_reads_pods_only_to_narrow_by_their_policies(case):
    """podPolicy narrow: an account of its own, allowed to read pods, its token for the agent
    alone, and its way to the API server through the gateway's NetworkPolicy; none: nothing."""
    values = render.values(case)
    narrow = values["gateway"]["podPolicy"] == "narrow"
    namespace = values["gateway"]["namespace"]
    objects = render.objects(case)
    (deployment,) = [
        o["spec"]["template"]["spec"] for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "egress-proxy"
    ]  # fmt: skip
    assert deployment["serviceAccountName"] == ("egress-proxy" if narrow else "default")
    agent = next(c for c in deployment["containers"] if c["name"] == "intercept-agent")
    assert (
        agent["command"][agent["command"].index("--gateway-pod-policy") + 1]
        == (values["gateway"]["podPolicy"])
    )
    # Its Envoy never connects to the API's addresses, whatever its NetworkPolicy lets in.
    command = agent["command"]
    refused = [v for k, v in itertools.pairwise(command) if k == "--upstream-refused-range"]
    assert refused == values["networkPolicy"]["kubernetesApiCidrs"]
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    roles = [o for o in objects if o["kind"] == "ClusterRole"]
    granted = [
        r for r in roles if {"pods"} == {x for rule in r["rules"] for x in rule["resources"]}
    ]
    granted_names = {r["metadata"]["name"] for r in granted}
    bindings = [
        b for b in objects
        if b["kind"] == "ClusterRoleBinding" and b["roleRef"]["name"] in granted_names
    ]  # fmt: skip
    (network_policy,) = [
        o["spec"] for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "egress-proxy"
    ]  # fmt: skip
    egress = network_policy["egress"]
    api_ports = [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    to_api = [r for r in egress if r.get("ports") == api_ports]
    if not narrow:
        assert (granted, bindings, to_api) == ([], [], [])
        assert "egress-proxy" not in {a["metadata"]["name"] for a in accounts}
        return
    (role,) = granted
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    # The pods it watches are those its NetworkPolicy lets in.
    (clients,) = [
        r for r in network_policy["ingress"] if {"protocol": "TCP", "port": 3128} in r["ports"]
    ]
    key, _, value = CLIENT_SELECTOR.partition("=")
    assert clients["from"][0]["podSelector"] == {"matchLabels": {key: value}}
    (binding,) = bindings
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "egress-proxy", "namespace": namespace}
    ]
    (account,) = [a for a in accounts if a["metadata"]["name"] == "egress-proxy"]
    assert account["metadata"]["namespace"] == namespace
    assert account["automountServiceAccountToken"] is False
    (rule,) = to_api
    assert [b["ipBlock"]["cidr"] for b in rule["to"]] == values["networkPolicy"][
        "kubernetesApiCidrs"
    ]


@pytest.mark.parametrize("case", render.CASES)
def test_the_network_policy_closes_the_api_and_metadata(case):
    values = render.values(case)["networkPolicy"]
    if not values["enabled"]:
        assert not [n for n in policies(case) if "-egress-" in n]
        return
    (rule,) = generating(case, "egress")["spec"]["rules"]
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
    spec = network_policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"intercept-proxy/enabled": "true"}}
    assert spec["policyTypes"] == ["Egress"]
    dns, egress = spec["egress"]
    # DNS by selector: an ipBlock does not match cluster pods on every network plugin.
    assert dns["to"] == [
        {
            "namespaceSelector": values["dns"]["namespaceSelector"],
            "podSelector": values["dns"]["podSelector"],
        }
    ]
    assert dns["ports"] == [{"protocol": p, "port": 53} for p in ("UDP", "TCP")]
    blocked = values["kubernetesApiCidrs"] + values["metadataCidrs"]
    by_cidr = {b["ipBlock"]["cidr"]: b["ipBlock"].get("except", []) for b in egress["to"]}
    assert by_cidr == {
        "0.0.0.0/0": [c for c in blocked if ":" not in c],
        "::/0": [c for c in blocked if ":" in c],
    }
    assert rule["exclude"]["any"][1]["resources"]["selector"] == {
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
    values = render.values(case)
    guardrails = values["guardrails"]["enabled"]
    # validate-pods and the rest; pod-security's 4; the guardrails' protection and minimum
    # security context (its rules).
    enforced = values["guardrails"]["securityContext"]["enabled"]
    minimum = len(schema.SECURITY_CONTEXT_RULES) * enforced
    assert len(rules) == 13 + 4 * values["podSecurity"]["enabled"] + guardrails * (1 + minimum)
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
        "label-kept": ["Pod", "Pod/status"],
        "no-ephemeral-containers": ["Pod/ephemeralcontainers"],
        "no-exec-into-sidecars": ["Pod/exec", "Pod/attach"],
        "approvals-by-approvers-only": ["Pod/exec"],
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
    applied = kyverno_cli.apply(
        [render.find(case, "ClusterPolicy", n) for n in ("inject-proxy", "validate-pods")], [pod]
    )
    assert applied.failed[pod["metadata"]["name"]] == []  # injected, then admitted
    script = pod["spec"]["containers"][0]["command"][-1]
    assert '[ "$code" != 403 ]' in script
    match = re.search(r"grep -Eq '([^']+)'", script)
    assert match is not None, script
    body = json.loads(denial_body(Decision(False, "no_rule", "not allowed"), "id"))
    # Envoy's own denials are compact JSON, the agent's are not: both must match.
    for separators in ((",", ":"), (", ", ": ")):
        assert re.search(match.group(1), json.dumps(body, separators=separators))


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
        (g["apiVersion"].rpartition("/")[0], g["kind"].lower() + "s")
        for policy in policies(case).values()
        for rule in policy["spec"]["rules"]
        if "generate" in rule
        for g in rule["generate"].get("foreach") or [rule["generate"]]
    }
    assert granted == {(g, r.replace("networkpolicys", "networkpolicies")) for g, r in generated}


@pytest.mark.parametrize(
    ("role", "account"),
    [("generate", "kyverno-background-controller"), ("admission", "kyverno-admission-controller")],
)
def test_kyverno_holds_its_roles_without_waiting_for_aggregation(role, account):
    """Bound as well as aggregated: `helm upgrade` to a shared CA was once refused because
    Kyverno's aggregated role did not yet hold the chart's rules when its policies came."""
    binding = render.find("default", "ClusterRoleBinding", f"kyverno-{role}")
    assert (
        binding["roleRef"]["name"]
        == render.find("default", "ClusterRole", f"kyverno-{role}")["metadata"]["name"]
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "kyverno"}
    ]


def test_kyverno_roles_are_bound_only_to_accounts_named():
    accounts = {"admissionController": "", "backgroundController": "kyverno-bg"}
    release = render.install_dry_run("x", {"kyverno": {"serviceAccounts": accounts}})
    objects = [d for d in yaml.safe_load_all(release["manifest"]) if d]
    bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert [b["metadata"]["name"] for b in bindings] == ["x-kyverno-generate"]
    assert bindings[0]["subjects"][0]["name"] == "kyverno-bg"


def test_notes_name_the_next_steps():
    notes = render.notes("default")
    for step in (
        'intercept-proxy/enabled: "true"',
        "kubectl logs POD -c proxy-init",
        "kubectl logs POD -c envoy",
        "intercept-proxy/opa-data",
        "helm test intercept-proxy",
        "kubernetesApiCidrs is empty",
        "Kyverno (>= 1.13)",
        "pod-security.kubernetes.io/enforce=privileged",
        "needs a runAsUser",
    ):
        assert step in notes
    assert "kubernetesApiCidrs is empty" not in render.notes("cert-manager")


PORTS = (0, 1, 52, 53, 54, 80, 443, 8080, 14999, 15000, 15001, 15002, 15020, 15022, 15053, 15099)
PORTS += (15100, 65535, 65536)
CIDRS = ("10.0.0.0/8", "10.0.0.1/8", "10.96.0.0/12", "10.96.0.0/11", "192.168.1.7/32", "0.0.0.0/0")
CIDRS += ("256.0.0.0/8", "10.0.0.0/33", "10.0.0.0", "01.2.3.4/32", "fd00::/8", "fd00::1/8")
CIDRS += ("fd00:10:96::/112", "fd00:10:96::1/112", "2001:db8::/31", "::/0", "::1/128")
CIDRS += ("2001:db8:0:0:0:0:0:0/32", "fd00::/129", "fd00::/-1", "fd00::/08", "fe80::/9")
UIDS = (-1, 0, 1, 101, 102, 65534, MAX_ID, MAX_ID + 1, 2**32 - 1, 2**32)
# (the values, what proxy-init is given for them): a port in both captured lists is refused
# when rendering (above), and the two UIDs must differ.
SAME_VALUES = [
    ({"capture": {"tlsPorts": [p], "httpPorts": [81]}}, {"tls_ports": [p], "http_ports": [81]})
    for p in PORTS
]
SAME_VALUES += [
    ({"capture": {"httpPorts": [p], "tlsPorts": [444]}}, {"http_ports": [p], "tls_ports": [444]})
    for p in PORTS
]
SAME_VALUES += [({"capture": {"inboundPorts": [p]}}, {"inbound_ports": [p]}) for p in PORTS]
SAME_VALUES += [({"capture": {"allowedCidrs": [c]}}, {"allowed_cidrs": [c]}) for c in CIDRS]
SAME_VALUES += [
    ({"envoy": {"uid": u}, "agent": {"uid": 7}}, {"envoy_uid": u, "agent_uid": 7}) for u in UIDS
]
SAME_VALUES += [({"agent": {"uid": u}}, {"agent_uid": u}) for u in UIDS]
# Spellings proxy-init reads but the schema does not (it names the forms it takes).
SPELLINGS_REFUSED = [{"allowed_cidrs": ["10.0.0.0"]}, {"allowed_cidrs": ["fd00::/08"]}]


def test_the_schema_and_proxy_init_accept_the_same_values():
    """One rule, applied everywhere: a value helm accepts is one proxy-init accepts in the pod
    (port 53 and 10.0.0.1/8 once passed the chart and the injector, and failed in every pod at
    start-up), and `intercept inject` accepts what helm does."""
    for values, capture in SAME_VALUES:
        try:
            render.install_dry_run("x", values)
            helm = True
        except render.HelmError:
            helm = False
        try:
            CaptureConfig(**capture)
            proxy_init = True
        except CaptureConfigError:
            proxy_init = False
        try:
            settings_from_values(values, "x")
            injector = True
        except SettingsError:
            injector = False
        assert helm == injector, f"{values}: helm {helm}, intercept inject {injector}"
        assert helm == proxy_init or capture in SPELLINGS_REFUSED, (
            f"{values}: helm {helm}, proxy-init {proxy_init}"
        )


def test_a_release_name_too_long_for_its_policies_is_refused():
    # Kyverno refuses a policy name over 63 characters: <release>-validate-pod-changes.
    with pytest.raises(render.HelmError, match="at most 42"):
        render.install_dry_run("r" * 43, {})
    policies = kinds_of({}, "r" * 42)["ClusterPolicy"]
    assert max(len(p["metadata"]["name"]) for p in policies) == 63


def test_the_exceptions_hold_only_where_the_release_injects():
    """Elsewhere a labelled pod is neither injected nor checked: no exemption either, and
    another release's pods are held by that release's own Pod Security rules."""
    selector = {"matchLabels": {"team": "a"}}
    found = kinds_of({"injection": {"namespaceSelector": selector}})
    (exception,) = found["PolicyException"]
    assert exception["spec"]["match"]["any"][0]["resources"]["namespaceSelector"] == selector
    (security,) = [p for p in found["ClusterPolicy"] if p["metadata"]["name"].endswith("-security")]
    for rule in security["spec"]["rules"]:
        labels = rule["match"]["any"][0]["resources"]["namespaceSelector"]["matchLabels"]
        assert labels["team"] == "a" and "intercept-proxy/pod-security" in labels


def test_the_guardrails_exempt_namespaces_from_named_rules_only():
    given = {
        "guardrails": {
            "enabled": True,
            "securityContext": {
                "exclusions": [
                    {"namespace": "ambassador", "rules": ["require-security-context-constraints"]},
                    {"namespace": "tools", "rules": list(schema.SECURITY_CONTEXT_RULES)},
                ]
            },
        }
    }
    manifest = render.install_dry_run("intercept-proxy", given)["manifest"]
    (policy,) = [
        o
        for o in yaml.safe_load_all(manifest)
        if o and (o["kind"], o["metadata"]["name"]) == ("ClusterPolicy", "require-security-context")
    ]
    excluded = {
        r["name"]: r.get("exclude", {}).get("any", [{}])[0].get("resources", {}).get("namespaces")
        for r in policy["spec"]["rules"]
    }
    # The schema's names are the policy's.
    assert excluded == {
        "require-security-context-constraints": ["ambassador", "tools"],
        "require-debug-container-security-context": ["tools"],
        "require-pod-security-context": ["tools"],
    }
    with pytest.raises(render.HelmError, match="guardrails/securityContext/exclusions/0/rules/0"):
        given["guardrails"]["securityContext"]["exclusions"][0]["rules"] = ["everything"]
        render.install_dry_run("intercept-proxy", given)
