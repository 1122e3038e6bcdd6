"""ext_authz: CheckRequest in, OPA-Envoy input, decision, response (with the decision as dynamic
metadata for Envoy's decision log) out."""

from __future__ import annotations

import asyncio
import json

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import json_format
from google.rpc import code_pb2

from intercept_proxy.authz.service import AuthorizationService, check_input
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.xds.routes import TRANSPORT_KEY

ENGINE = RegorusEngine(parse_policy("allowed_domains: [pypi.org]"))
REQUEST_ID = "0f2b6a6e-4d0c-4a51-9a43-6c1f0e5b7d21"


def check_request(
    method: str, host: str, path: str, *, transport: str = "tls", sni: str | None = None
) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method,
        host=host,
        path=path,
        scheme="https" if transport == "tls" else "http",
        protocol="HTTP/1.1",
        headers={
            ":authority": host,
            "authorization": "Bearer secret-token",
            "cookie": "s=1",
            "x-request-id": REQUEST_ID,
        },
    )
    attrs = attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=http),
        context_extensions={TRANSPORT_KEY: transport},
    )
    # Envoy fills tls_session on plain connections too (with an empty name).
    attrs.tls_session.sni = host.split(":")[0] if sni is None else sni
    return external_auth_pb2.CheckRequest(attributes=attrs)


def test_input_has_the_opa_envoy_shape():
    doc = check_input(check_request("GET", "pypi.org", "/simple/?q=1"))
    http = doc["attributes"]["request"]["http"]
    assert (http["method"], http["host"], http["path"], http["scheme"]) == (
        "GET",
        "pypi.org",
        "/simple/?q=1",
        "https",
    )
    assert http["headers"]["authorization"] == "Bearer secret-token"
    assert doc["attributes"]["tlsSession"] == {"sni": "pypi.org"}
    assert doc["version"] == {"encoding": "protojson", "ext_authz": "v3"}


def test_plain_connections_have_no_tls_session():
    doc = check_input(check_request("GET", "pypi.org", "/", transport="plain", sni=""))
    assert "tlsSession" not in doc["attributes"]
    assert ENGINE.evaluate(doc).allow


def run_check(request):
    observed = []
    service = AuthorizationService(lambda: ENGINE, lambda d, s: observed.append((d, s)))
    response = asyncio.run(service.Check(request, None))
    return response, json_format.MessageToDict(response.dynamic_metadata), observed


def test_allowed_request():
    response, metadata, observed = run_check(check_request("GET", "pypi.org", "/x?t=1"))
    assert response.status.code == code_pb2.OK
    (added,) = response.ok_response.response_headers_to_add
    assert (added.header.key, added.header.value) == ("x-intercept-decision-id", REQUEST_ID)
    # It replaces the id a route that decides itself, then forwards, adds (one id, not two).
    assert added.append_action == added.OVERWRITE_IF_EXISTS_OR_ADD
    assert metadata["allow"] is True
    assert metadata["rule"] == "allowed_domains"
    assert metadata["policy_revision"] == ENGINE.revision
    assert observed[0][0].allow


def test_denied_request_gets_403_json_with_envoys_request_id():
    response, metadata, _ = run_check(check_request("POST", "pypi.org", "/upload?t=1"))
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 403
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["content-type"] == "application/json"
    body = json.loads(denied.body)
    assert body["error"]["code"] == "POLICY_BLOCKED"
    assert body["error"]["rule"] == metadata["rule"] == "method_not_allowed"
    assert "permits only GET and HEAD" in body["error"]["message"] == metadata["reason"]
    assert body["error"]["decision_id"] == headers["x-intercept-decision-id"] == REQUEST_ID
    assert metadata["allow"] is False


def test_the_decision_for_the_log_holds_no_header_value_or_query():
    _, metadata, _ = run_check(check_request("GET", "pypi.org", "/a/b?token=hunter2"))
    assert set(metadata) == {"allow", "rule", "reason", "policy_revision", "counted", "eval_ms"}
    assert metadata["counted"] == "agent|true|allowed_domains"
    text = json.dumps(metadata)
    for secret in ("hunter2", "token=", "secret-token", "s=1"):
        assert secret not in text


def test_a_request_carrying_a_secret_is_refused_before_the_policy():
    service = AuthorizationService(
        lambda: ENGINE, secrets=lambda: [("secret-token", "credentials[0] (for api.test)")]
    )
    # The header check_request sends: "authorization: Bearer secret-token".
    response = asyncio.run(service.Check(check_request("GET", "pypi.org", "/"), None))
    assert response.status.code == code_pb2.PERMISSION_DENIED
    body = json.loads(response.denied_response.body)
    assert body["error"]["rule"] == "credential_leaked"
    assert body["error"]["message"].startswith("the request carries the secret of credentials[0]")
    assert "secret-token" not in response.denied_response.body
    in_path = check_request("GET", "pypi.org", "/?key=secret-token")
    assert asyncio.run(service.Check(in_path, None)).status.code == code_pb2.PERMISSION_DENIED
    other = AuthorizationService(lambda: ENGINE, secrets=lambda: [("another-one", "c")])
    allowed = asyncio.run(other.Check(check_request("GET", "pypi.org", "/"), None))
    assert allowed.status.code == code_pb2.OK
