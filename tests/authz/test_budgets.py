"""Budgets: what the ledger charges and refuses, before anything is forwarded."""

from __future__ import annotations

import asyncio
import json

from google.rpc import code_pb2

from intercept_proxy.authz.budgets import RULE, Ledger, Upload
from intercept_proxy.authz.service import AuthorizationService
from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.model import parse_policy
from tests.authz.test_service import ENGINE, check_request

BUDGETS = parse_policy(
    """
budgets:
  - {host: api.test, requests: 2}
  - {host: "*.uploads.test", upload_bytes: 100}
"""
).budgets


def test_requests_are_counted_and_the_one_too_many_refused():
    seen = []
    ledger = Ledger(lambda budget, requests, sent: seen.append((budget.host, requests, sent)))
    for _ in range(2):
        assert ledger.charge(BUDGETS, Upload("api.test", 10), "GET api.test:443") is None
    refused = ledger.charge(BUDGETS, Upload("api.test", 0), "GET api.test:443")
    assert refused is not None
    assert (refused.allow, refused.rule, refused.code) == (False, RULE, ErrorCode.BUDGET_EXCEEDED)
    assert refused.reason == (
        "GET api.test:443: the budget of api.test for this run allows no more: "
        "2 of 2 requests are spent"
    )
    assert seen == [("api.test", 1, 10), ("api.test", 2, 20)]
    # Other hosts are not counted.
    assert ledger.charge(BUDGETS, Upload("other.test", None), "GET other.test:443") is None


def test_an_upload_that_would_overspend_is_refused_and_charges_nothing():
    ledger = Ledger()
    charge = [ledger.charge(BUDGETS, Upload("a.uploads.test", n), "POST x") for n in (60, 50, 40)]
    assert [c is None for c in charge] == [True, False, True]  # 60, then 110 > 100, then 100
    assert "60 of 100 bytes are spent, and it sends 50" in str(charge[1])
    # A body of unknown length is never counted as nothing.
    unknown = ledger.charge(BUDGETS, Upload("b.uploads.test", None), "POST x")
    assert unknown is not None and "what it sends cannot be counted" in unknown.reason


def test_a_changed_budget_starts_again():
    ledger = Ledger()
    [one] = parse_policy("budgets: [{host: api.test, requests: 1}]").budgets
    [two] = parse_policy("budgets: [{host: api.test, requests: 2}]").budgets
    assert ledger.charge((one,), Upload("api.test", 0), "x") is None
    assert ledger.charge((one,), Upload("api.test", 0), "x") is not None
    assert ledger.charge((two,), Upload("api.test", 0), "x") is None
    # And back: from nothing again.
    assert ledger.charge((one,), Upload("api.test", 0), "x") is None


def test_the_service_charges_only_what_the_policy_allows():
    """A request the policy or the tripwire refuses charges nothing."""
    budgets = parse_policy("budgets: [{host: pypi.org, requests: 1}]").budgets
    service = AuthorizationService(
        lambda: ENGINE, secrets=lambda: [("secret-token", "c")], budgets=lambda: budgets
    )
    # check_request sends "authorization: Bearer secret-token": the tripwire refuses it.
    leaked = asyncio.run(service.Check(check_request("GET", "pypi.org", "/"), None))
    assert json.loads(leaked.denied_response.body)["error"]["rule"] == "credential_leaked"
    service = AuthorizationService(lambda: ENGINE, budgets=lambda: budgets)
    denied = asyncio.run(service.Check(check_request("POST", "pypi.org", "/"), None))
    assert json.loads(denied.denied_response.body)["error"]["rule"] == "method_not_allowed"
    allowed = asyncio.run(service.Check(check_request("GET", "pypi.org", "/"), None))
    assert allowed.status.code == code_pb2.OK  # the budget's one request
    spent = asyncio.run(service.Check(check_request("GET", "pypi.org", "/"), None))
    error = json.loads(spent.denied_response.body)["error"]
    assert (error["code"], error["rule"]) == ("BUDGET_EXCEEDED", RULE)
