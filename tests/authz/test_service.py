"""ext_authz: CheckRequest in, OPA-Envoy input, decision, response and decision log out."""

from __future__ import annotations

import asyncio
import json

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.rpc import code_pb2

from intercept_proxy.authz.decisionlog import DecisionLog
from intercept_proxy.authz.service import AuthorizationService, check_input
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.model import parse_policy
from intercept_proxy.xds.resources import TRANSPORT_KEY

ENGINE = RegorusEngine(parse_policy("allowed_domains: [pypi.org]"))


def check_request(
    method: str, host: str, path: str, *, transport: str = "tls", sni: str | None = None
) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method,
        host=host,
        path=path,
        scheme="https" if transport == "tls" else "http",
        protocol="HTTP/1.1",
        headers={":authority": host, "authorization": "Bearer secret-token", "cookie": "s=1"},
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


def run_check(request, tmp_path):
    log_path = tmp_path / "decisions.log"
    log = DecisionLog(log_path)
    observed = []
    service = AuthorizationService(lambda: ENGINE, log, lambda d, s: observed.append((d, s)))
    response = asyncio.run(service.Check(request, None))
    log.close()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    return response, records, observed


def test_allowed_request(tmp_path):
    response, records, observed = run_check(check_request("GET", "pypi.org", "/x?t=1"), tmp_path)
    assert response.status.code == code_pb2.OK
    header = response.ok_response.response_headers_to_add[0].header
    assert header.key == "x-intercept-decision-id"
    assert header.value == records[0]["decision_id"]
    assert records[0]["allow"] is True
    assert observed[0][0].allow


def test_denied_request_gets_403_json_with_the_logged_decision_id(tmp_path):
    response, records, _ = run_check(check_request("POST", "pypi.org", "/upload?t=1"), tmp_path)
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 403
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["content-type"] == "application/json"
    body = json.loads(denied.body)
    assert body["error"]["code"] == "POLICY_BLOCKED"
    assert "permits only GET and HEAD" in body["error"]["message"]
    assert (
        body["error"]["decision_id"]
        == records[0]["decision_id"]
        == headers["x-intercept-decision-id"]
    )


def test_decision_log_never_holds_header_values_or_queries(tmp_path):
    _, records, _ = run_check(check_request("GET", "pypi.org", "/a/b?token=hunter2"), tmp_path)
    record = records[0]
    assert set(record) == {
        "time",
        "decision_id",
        "allow",
        "rule",
        "reason",
        "method",
        "scheme",
        "host",
        "path",
        "sni",
        "eval_ms",
        "policy_revision",
    }
    assert record["path"] == "/a/b"
    line = json.dumps(record)
    for secret in ("hunter2", "token=", "secret-token", "s=1"):
        assert secret not in line
