"""The decision event: what the decision log says of one request, whoever judged it.

One definition for every producer and reader. Envoy writes the log (its access log): the request
fields come from the Envoy operators declared here, the verdict from the agent's ext_authz
metadata or from the route's own metadata, both keyed by `VERDICT`. `intercept decisions`,
`intercept run`'s summary and the tests read it back through `DecisionEvent`. The schema is
versioned: a reader refuses a line of a schema it does not know rather than misread it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

SCHEMA = "intercept.decision/v1"
# The response header naming the decision of a request (Envoy's stream id).
DECISION_HEADER = "x-intercept-decision-id"
# The gateway's client, as the gateway saw it (an Envoy filter state object it hands to the
# listener that judges the request).
CLIENT_STATE = "intercept.client"


class ErrorCode(StrEnum):
    """The seeds' canonical error codes: every answer the sandbox gives in place of the
    upstream's carries one (docs/policy.md says which, and when)."""

    POLICY_BLOCKED = "POLICY_BLOCKED"
    HITL_REQUIRED = "HITL_REQUIRED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    CONFLICT = "CONFLICT"
    RETRY_LATER = "RETRY_LATER"
    SCHEMA_VALIDATION_FAILED = "SCHEMA_VALIDATION_FAILED"
    INVARIANT_VIOLATION = "INVARIANT_VIOLATION"


# The code of a policy's 403 body.
POLICY_BLOCKED = ErrorCode.POLICY_BLOCKED


class Judge(StrEnum):
    ENVOY = "envoy"  # a compiled route decided
    AGENT = "agent"  # the agent decided (ext_authz)
    NONE = "none"  # the agent should have, and did not answer


# The verdict, under the same keys in the agent's metadata and in a route's metadata.
VERDICT = ("allow", "rule", "reason", "policy_revision")

# Envoy counts every decision in its statistics (the agent serves them as
# `intercept_decisions_total{judge,result,rule}`) under one tag whose value carries the three
# labels, written beside the verdict in both metadata under COUNTED: one tag read from one key
# costs Envoy about a tenth less CPU per request than three (measured with `intercept bench`).
COUNTED = "counted"
_COUNTED_SEPARATOR = "|"  # after a judge and a boolean, neither of which has one


def counted(judge: Judge, allow: bool | None, rule: str | None) -> str:
    """The counter's tag value of a verdict."""
    return _COUNTED_SEPARATOR.join((judge.value, "true" if allow else "false", rule or ""))


def counted_labels(value: str) -> tuple[str, str, str]:
    """(judge, result, rule) of a counter's tag value; an empty one (no route took the request:
    a protocol error) was no one's decision and allowed nothing."""
    judge, _, rest = value.partition(_COUNTED_SEPARATOR)
    allow, _, rule = rest.partition(_COUNTED_SEPARATOR)
    return judge or Judge.NONE.value, "allow" if allow == "true" else "deny", rule


class DecisionEventError(ValueError):
    """A line that is not a decision event of this schema; the message says why."""


def _envoy(operator: str) -> Any:
    """A request field and the Envoy access-log operator that fills it."""
    return field(default=None, metadata={"envoy": operator})


@dataclass(frozen=True)
class DecisionEvent:
    schema: str = SCHEMA
    judge: Judge | None = None  # None: no route at all (a protocol error); details say why
    allow: bool | None = None
    rule: str | None = None
    reason: str | None = None  # the full text: the target, then why
    policy_revision: str | None = None
    eval_ms: float | None = None  # the agent's evaluation time, when it judged
    time: str | None = _envoy("%START_TIME%")
    decision_id: str | None = _envoy("%STREAM_ID%")
    method: str | None = _envoy("%REQ(:METHOD)%")
    scheme: str | None = _envoy("%REQ(:SCHEME)%")
    host: str | None = _envoy("%REQ(:AUTHORITY)%")
    # Never the query string: it may carry credentials. Never a header value.
    path: str | None = _envoy("%REQ_WITHOUT_QUERY(:PATH)%")
    sni: str | None = _envoy("%REQUESTED_SERVER_NAME%")
    # The egress gateway's client (its address); null for a sidecar's, which is its pod.
    client: str | None = _envoy(f"%FILTER_STATE({CLIENT_STATE}:PLAIN)%")
    status: int | None = _envoy("%RESPONSE_CODE%")
    details: str | None = _envoy("%RESPONSE_CODE_DETAILS%")
    flags: str | None = _envoy("%RESPONSE_FLAGS%")
    bytes_received: int | None = _envoy("%BYTES_RECEIVED%")
    bytes_sent: int | None = _envoy("%BYTES_SENT%")
    duration_ms: int | None = _envoy("%DURATION%")
    upstream: str | None = _envoy("%UPSTREAM_HOST%")
    upstream_failure: str | None = _envoy("%UPSTREAM_TRANSPORT_FAILURE_REASON%")

    @classmethod
    def from_json(cls, line: str) -> DecisionEvent:
        try:
            data = json.loads(line)
        except ValueError as e:
            raise DecisionEventError(f"not JSON: {e}") from None
        if not isinstance(data, dict):
            raise DecisionEventError("not a JSON object")
        if data.get("schema") != SCHEMA:
            raise DecisionEventError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise DecisionEventError(f"unknown fields {unknown}")
        judge = data.get("judge")
        try:
            return cls(**{**data, "judge": Judge(judge) if judge is not None else None})
        except ValueError:
            raise DecisionEventError(f"judge {judge!r}") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FIELDS = tuple(f.name for f in fields(DecisionEvent))
# The request fields, each with the Envoy operator that fills it.
REQUEST_FIELDS = {
    f.name: f.metadata["envoy"] for f in fields(DecisionEvent) if "envoy" in f.metadata
}


def parse_log(text: str, *, strict: bool = False) -> Iterator[DecisionEvent]:
    """The events of a decision log. Not `strict`: other lines (a container log's, a line cut
    short) are skipped; `strict`: they are an error naming the line."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield DecisionEvent.from_json(line)
        except DecisionEventError as e:
            if strict:
                raise DecisionEventError(f"line {number}: {e}") from None


def error_body(
    code: ErrorCode, message: str, *, rule: str | None = None, decision_id: str | None = None
) -> dict[str, Any]:
    """The JSON body of every answer the sandbox gives instead of the upstream's; `rule` says
    what decided it (a policy's rule, or one of Envoy's own failures)."""
    error: dict[str, Any] = {"code": code.value, "message": message}
    if rule is not None:
        error["rule"] = rule
    if decision_id is not None:
        error["decision_id"] = decision_id
    return {"error": error}
