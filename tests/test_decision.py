"""The decision event: one definition, read back as written, refused when it is not one."""

from __future__ import annotations

import json

import pytest

from intercept_proxy.decision import (
    FIELDS,
    SCHEMA,
    DecisionEvent,
    DecisionEventError,
    Judge,
    parse_log,
)
from intercept_proxy.xds.resources import Logged, decision_fields

LINE = {
    "schema": SCHEMA,
    "judge": "envoy",
    "allow": False,
    "rule": "default_deny",
    "reason": "GET x.test:443 is not allowed",
    "policy_revision": "abc",
    "host": "x.test",
    "status": 403,
}


def test_an_event_reads_back_as_written():
    event = DecisionEvent.from_json(json.dumps(LINE))
    assert event.judge is Judge.ENVOY and event.allow is False and event.status == 403
    assert {k: v for k, v in event.as_dict().items() if v is not None} == LINE


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"schema": "intercept.decision/v2"}, "schema 'intercept.decision/v2'"),
        ({"schema": None}, "schema None"),
        ({"verdict": "allow"}, r"unknown fields \['verdict'\]"),
        ({"judge": "opa"}, "judge 'opa'"),
    ],
)
def test_what_is_not_an_event_of_this_schema_is_refused(change, problem):
    with pytest.raises(DecisionEventError, match=problem):
        DecisionEvent.from_json(json.dumps({**LINE, **change}))


def test_a_log_skips_other_lines_unless_strict():
    text = "\n".join(["[info] envoy started", json.dumps(LINE), "{not json", ""])
    assert [e.host for e in parse_log(text)] == ["x.test"]
    with pytest.raises(DecisionEventError, match="line 1: not JSON"):
        list(parse_log(text, strict=True))


@pytest.mark.parametrize("tls", [True, False])
def test_envoys_log_format_writes_every_field_of_the_event(tls):
    assert set(decision_fields(tls=tls, logged=Logged.AGENT)) == set(FIELDS)
    for refused in (Logged.RATE_LIMIT, Logged.OVERSIZED, Logged.UNANSWERED):
        assert set(decision_fields(tls=tls, logged=refused)) == set(FIELDS) - {"eval_ms"}
    # A route's decision has no evaluation time: only the agent evaluates.
    assert set(decision_fields(tls=tls, logged=Logged.ROUTE)) == set(FIELDS) - {"eval_ms"}
