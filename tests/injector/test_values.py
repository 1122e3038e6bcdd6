"""The chart's values as settings: any part of a values file, the rest the chart's defaults,
which are the injector's own; a wrong key or type named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from intercept_proxy.injector.settings import InjectorSettings, Resources, SettingsError
from intercept_proxy.injector.values import DEFAULTS, settings_from_values

CHART_VALUES = Path(__file__).parents[2] / "charts" / "intercept-proxy" / "values.yaml"


def read(defaults: Any, chart: Any) -> Any:
    """The chart's values as far as the injector reads them."""
    if isinstance(defaults, dict) and isinstance(chart, dict) and chart.keys() >= defaults.keys():
        return {k: read(defaults[k], chart[k]) for k in defaults}
    return chart


def test_the_injectors_defaults_are_the_charts():
    chart = yaml.safe_load(CHART_VALUES.read_text())
    assert read(DEFAULTS, chart) == DEFAULTS
    default = InjectorSettings(policy_config_map="intercept-proxy-policy")
    assert settings_from_values(chart, "intercept-proxy") == default
    assert settings_from_values({}, "intercept-proxy") == default
    assert settings_from_values(None, "intercept-proxy") == default  # an empty file


def test_a_partial_values_file_keeps_the_other_defaults():
    given = {
        "ca": {"mode": "secret"},
        "capture": {"tlsPorts": [443, 8443]},
        "agent": {"resources": {"limits": {"memory": "1Gi"}}},
        "networkPolicy": {"kubernetesApiCidrs": ["10.96.0.1/32"]},  # not the injector's
    }
    s = settings_from_values(given, "sandbox")
    assert (s.ca_mode, s.ca_secret) == ("secret", "sandbox-ca")
    assert (s.tls_ports, s.http_ports) == ((443, 8443), (80,))
    # Maps merge key by key, as Helm coalesces values; lists and scalars are replaced.
    assert s.agent_resources == Resources(
        {"cpu": "50m", "memory": "64Mi"}, {"cpu": "1", "memory": "1Gi"}
    )
    assert s.envoy_uid == 101


def test_a_null_quantity_removes_it_and_quantities_are_kept_as_given():
    s = settings_from_values(
        {"proxyInit": {"resources": {"requests": {"cpu": None}, "limits": {"cpu": 2000}}}}, "r"
    )
    assert s.init_resources == Resources({"memory": "32Mi"}, {"memory": "128Mi", "cpu": 2000})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"capture": {"tlsPort": [443]}}, "values: capture.tlsPort: the chart has no such value"),
        ({"captures": {}}, "values: captures: the chart has no such value"),
        (
            {"capture": {"tlsPorts": ["443"]}},
            "values: capture.tlsPorts[0]: '443' is not an integer",
        ),
        ({"capture": {"tlsPorts": 443}}, "values: capture.tlsPorts: 443 is not a list"),
        ({"envoy": {"uid": "101"}}, "values: envoy.uid: '101' is not an integer"),
        ({"agent": {"uid": True}}, "values: agent.uid: True is not an integer"),
        ({"agent": {"certValidityHours": "12"}}, "values: agent.certValidityHours: '12' is not a"),
        ({"serviceAccountToken": {"automount": "yes"}}, "automount: 'yes' is not true or false"),
        ({"ca": {"mode": "vault"}}, "values: ca.mode: 'vault' is not one of"),
        ({"policy": {"podOverride": "maybe"}}, "values: policy.podOverride: 'maybe' is not one"),
        ({"image": {"pullPolicy": "Sometimes"}}, "values: image.pullPolicy: 'Sometimes'"),
        ({"image": None}, "values: image: a value is needed"),
        ({"capture": {"tlsPort": None}}, "values: capture.tlsPort: the chart has no such value"),
        ({"image": {"tag": "v1\n"}}, "values: image.tag: 'v1\\n' is not valid"),
        ({"capture": {"allowedCidrs": ["10.0.0.1/8"]}}, "capture.allowedCidrs[0]: '10.0.0.1/8'"),
        ({"image": "repo:tag"}, "values: image: 'repo:tag' is not a mapping"),
        (
            {"agent": {"resources": {"limits": {"cpu": "half"}}}},
            "agent.resources.limits.cpu: 'half'",
        ),
        ({"agent": {"resources": {"limits": ["1"]}}}, "agent.resources.limits: ['1'] is not a map"),
        (["image"], "values: the file: ['image'] is not a mapping"),
        # Values the chart's templates refuse too.
        ({"agent": {"uid": 101}}, "envoy_uid and agent_uid must be distinct"),
    ],
)
def test_wrong_values_are_named(given, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings_from_values(given, "r")
