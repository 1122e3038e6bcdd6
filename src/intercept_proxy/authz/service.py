"""Envoy's ext_authz (gRPC v3) backed by the policy engine.

Every request Envoy asks about becomes an OPA-Envoy shaped input and gets a decision, which either
passes (with the decision id as a response header) or is answered 403 with a JSON body explaining
why. The decision goes back to Envoy as dynamic metadata too: Envoy's decision log records it.
The decision id is Envoy's request id, the one Envoy logs for decisions it makes itself.

Before the policy: a request that carries the secret of one of the policy's credentials is
refused, whatever the policy says. The workload holds placeholders; a secret of its own is one
that leaked (routes.py sends every request carrying a credential's header here).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from intercept_proxy.authz.approvals import Approvals
from intercept_proxy.authz.budgets import Ledger, Upload
from intercept_proxy.decision import COUNTED, DECISION_HEADER, VERDICT, Judge, counted, error_body
from intercept_proxy.policy.engine import Decision, PolicyEngine
from intercept_proxy.policy.input import INPUT_VERSION
from intercept_proxy.policy.limits import Budget
from intercept_proxy.xds.routes import CLIENT_HEADER, TRANSPORT_KEY

DecisionObserver = Callable[[Decision, float], None]
# The engine that judges a client of the egress gateway (its address), given the policy's.
ClientEngine = Callable[[PolicyEngine, str], Awaitable[PolicyEngine]]
# The texts a request must not carry (a secret, the header value made of it), each with the
# credential it belongs to.
Secrets = Callable[[], Sequence[tuple[str, str]]]
LEAKED_RULE = "credential_leaked"


def check_input(request: external_auth_pb2.CheckRequest) -> dict[str, Any]:
    """The OPA-Envoy input document (protojson field names) for a CheckRequest."""
    attrs = request.attributes
    http = attrs.request.http
    attributes: dict[str, Any] = {
        "request": {
            "http": {
                "id": http.id,
                "method": http.method,
                "host": http.host,
                "path": http.path,
                "scheme": http.scheme,
                "protocol": http.protocol,
                "headers": dict(http.headers),
            }
        },
        "source": {"address": _address(attrs.source.address)},
        "destination": {"address": _address(attrs.destination.address)},
    }
    if http.raw_body:
        attributes["request"]["http"]["rawBody"] = base64.b64encode(http.raw_body).decode()
    if attrs.context_extensions:
        attributes["contextExtensions"] = dict(attrs.context_extensions)
    if is_tls(request):
        attributes["tlsSession"] = {"sni": attrs.tls_session.sni}
    return {"attributes": attributes, "version": INPUT_VERSION}


def is_tls(request: external_auth_pb2.CheckRequest) -> bool:
    """Whether the request arrived over TLS. Envoy sets `tls_session` on plain connections too,
    so the listener says it; a server name proves TLS whatever the listener."""
    attrs = request.attributes
    return attrs.context_extensions.get(TRANSPORT_KEY) == "tls" or bool(attrs.tls_session.sni)


def _address(address: base_pb2.Address) -> dict[str, Any]:
    socket = address.socket_address
    return {"socketAddress": {"address": socket.address, "portValue": socket.port_value}}


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    # Replaces the route's copy: a check on a route that decides itself (an SNI that is not the
    # host, a read that sent a body), then forwards, would otherwise send two.
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value), append_action=overwrite
    )


def denial_body(decision: Decision, decision_id: str) -> str:
    body = error_body(decision.code, decision.reason, rule=decision.rule, decision_id=decision_id)
    return json.dumps(body)


def _metadata(decision: Decision, revision: str, eval_ms: float) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    verdict = (decision.allow, decision.rule, decision.reason, revision)
    metadata.update(
        {
            **dict(zip(VERDICT, verdict, strict=True)),
            COUNTED: counted(Judge.AGENT, decision.allow, decision.rule),
            "eval_ms": round(eval_ms, 3),
        }
    )
    return metadata


def check_response(
    decision: Decision, decision_id: str, metadata: struct_pb2.Struct
) -> external_auth_pb2.CheckResponse:
    id_header = _header(DECISION_HEADER, decision_id)
    if decision.allow:
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(response_headers_to_add=[id_header]),
        )
    else:
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=decision.reason),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
                headers=[_header("content-type", "application/json"), id_header],
                body=denial_body(decision, decision_id),
            ),
        )
    response.dynamic_metadata.CopyFrom(metadata)
    return response


def leaked(
    request: external_auth_pb2.CheckRequest, secrets: Sequence[tuple[str, str]]
) -> Decision | None:
    """The denial of a request whose headers or path carry a credential's secret."""
    if not secrets:
        return None
    http = request.attributes.request.http
    carried = [http.path, *http.headers.values()]
    for secret, credential in secrets:
        if any(secret in text for text in carried):
            # Nothing of the request itself: the secret may be anywhere in it.
            return Decision(
                False,
                LEAKED_RULE,
                f"the request carries the secret of {credential}, which only the proxy sends "
                "(the workload holds a placeholder): it leaked",
            )
    return None


def destination(request: external_auth_pb2.CheckRequest) -> tuple[str, int]:
    """The host (lower case, no trailing dot) and port a request is for."""
    http = request.attributes.request.http
    host = http.host.lower().removesuffix(".")
    default = 443 if is_tls(request) else 80
    if host.startswith("["):
        return host, default
    name, _, port = host.partition(":")
    return name.removesuffix("."), int(port) if port.isdigit() else default


def uploaded(request: external_auth_pb2.CheckRequest) -> tuple[Upload, str]:
    """What the request would spend of a budget, and its target as reasons begin."""
    http = request.attributes.request.http
    host, port = destination(request)
    length_header = http.headers.get("content-length")
    if "upgrade" in http.headers or http.method == "CONNECT":
        length: int | None = None  # what follows is no body: it never ends
    elif length_header is not None and length_header.isdigit():
        length = int(length_header)
    else:  # a body's first byte, if any, came with the check (ext_authz with_request_body)
        length = None if http.raw_body or http.body else 0
    return Upload(host, length), f"{http.method} {host}:{port}"


def client(request: external_auth_pb2.CheckRequest) -> str:
    """The gateway's client: the address the gateway saw (its listener writes it: requests reach
    the listener that judges them over Envoy's internal connections), else the peer's."""
    written: str = request.attributes.request.http.headers.get(CLIENT_HEADER, "")
    return written or str(request.attributes.source.address.socket_address.address)


def decision_id(request: external_auth_pb2.CheckRequest) -> str:
    """Envoy's request id (it drops any the client sent); a fresh one for other callers."""
    return request.attributes.request.http.headers.get("x-request-id") or uuid.uuid4().hex


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        observe: DecisionObserver = lambda decision, seconds: None,
        secrets: Secrets = lambda: (),
        budgets: Callable[[], tuple[Budget, ...]] = lambda: (),
        ledger: Ledger | None = None,
        approvals: Approvals | None = None,
        hold_s: Callable[[], int | None] = lambda: None,
        clients: ClientEngine | None = None,
    ) -> None:
        """`engine` returns the engine in force now (it changes when the policy reloads), and
        `secrets` and `budgets` the credentials' secrets and the budgets with it; `ledger`
        counts what the budgets spent. A request the policy decides `approval_required` waits
        up to `hold_s()` seconds for a person's answer to `approvals` (None: it does not).
        `clients`: the egress gateway's, each judged by the engine it gives (its own policy)."""
        self._engine = engine
        self._clients = clients
        self._observe = observe
        self._secrets = secrets
        self._budgets = budgets
        self._ledger = ledger or Ledger()
        self._approvals = approvals
        self._hold_s = hold_s

    async def Check(  # noqa: N802 - gRPC method name
        self, request: external_auth_pb2.CheckRequest, context: object
    ) -> external_auth_pb2.CheckResponse:
        engine = self._engine()
        if self._clients is not None:
            engine = await self._clients(engine, client(request))
        input_doc = check_input(request)
        started = time.perf_counter()
        decision = leaked(request, self._secrets()) or engine.evaluate(input_doc)
        hold_s = self._hold_s()
        if decision.grant is not None and self._approvals and hold_s is not None:
            evaluated = time.perf_counter()
            upload, target = uploaded(request)
            path = request.attributes.request.http.path
            decision = await self._approvals.decide(
                decision, target, path, upload.length or 0, hold_s, input_doc
            )
            started += time.perf_counter() - evaluated  # the wait is no evaluation
        if decision.allow:
            upload, target = uploaded(request)
            decision = self._ledger.charge(self._budgets(), upload, target) or decision
        elapsed = time.perf_counter() - started
        self._observe(decision, elapsed)
        metadata = _metadata(decision, engine.revision, elapsed * 1000)
        return check_response(decision, decision_id(request), metadata)
