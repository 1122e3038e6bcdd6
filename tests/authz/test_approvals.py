"""The approvals broker: questions, answers, expiry and bounds (the data path's side is in
tests/sandbox/test_approvals.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from intercept_proxy.authz import approvals as approvals_module
from intercept_proxy.authz.approvals import (
    MAX_HELD,
    MAX_QUESTIONS,
    WATCH_QUEUE,
    ApprovalError,
    Approvals,
    Grant,
)
from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.engine import Decision

ASKED = Decision(
    False,
    "approval_required",
    "GET a.test:443 is not allowed; a person may",
    ErrorCode.HITL_REQUIRED,
)
READ = Grant("allowed_domains", "a.test")


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 10))


def held(approvals: Approvals, grant: Grant = READ, timeout_s: int = 5) -> asyncio.Task[Decision]:
    return asyncio.create_task(approvals.decide(ASKED, grant, "GET a.test:443", "/p", timeout_s))


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_once_lets_every_waiting_request_through_and_grants_nothing():
    granted: list[Grant] = []

    async def test() -> None:
        approvals = Approvals(granted.append)
        requests = [held(approvals) for _ in range(3)]
        await until(lambda: approvals.pending() and approvals.pending()[0]["waiting"] == 3)
        [question] = approvals.pending()
        assert question["request"] == "GET a.test:443/p"
        assert question["grant"] == {"key": "allowed_domains", "entry": "a.test"}
        approvals.answer(question["id"], "once")
        decisions = await asyncio.gather(*requests)
        assert {(d.allow, d.rule, d.reason) for d in decisions} == {
            (True, "approved", "GET a.test:443: a person allowed it once")
        }
        assert approvals.pending() == []

    run(test)
    assert granted == []


@pytest.mark.parametrize("given", ["run", "always"])
def test_run_and_always_grant_for_the_run(given):
    granted: list[Grant] = []

    async def test() -> None:
        approvals = Approvals(granted.append)
        request = held(approvals)
        await until(approvals.pending)
        approvals.answer(approvals.pending()[0]["id"], given)
        decision = await request
        assert decision.allow and decision.reason.endswith(
            "allowed allowed_domains: [a.test] for this run"
        )

    run(test)
    assert granted == [READ]


def test_deny_refuses_now_and_later():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        request = held(approvals)
        await until(approvals.pending)
        approvals.answer(approvals.pending()[0]["id"], "deny")
        decision = await request
        assert (decision.allow, decision.rule, decision.code) == (
            False,
            "approval_denied",
            ErrorCode.POLICY_BLOCKED,
        )
        later = await held(approvals)
        assert (
            later.rule == "approval_denied" and "for as long as this sandbox runs" in later.reason
        )
        assert approvals.pending() == []
        # Another grant for the same host (a write) is another question.
        write = held(approvals, Grant("unrestricted_domains", "a.test"))
        await until(approvals.pending)
        write.cancel()

    run(test)


def test_unanswered_it_expires_hitl_required():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        decision = await held(approvals, timeout_s=1)
        assert (decision.allow, decision.rule, decision.code) == (
            False,
            "approval_required",
            ErrorCode.HITL_REQUIRED,
        )
        assert decision.reason.startswith(ASKED.reason + "; no one answered within 1 s")
        assert "add allowed_domains: [a.test] to the policy" in decision.reason
        assert approvals.pending() == []

    run(test)


def test_a_gone_client_leaves_the_question_until_it_expires():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        request = held(approvals, timeout_s=1)
        await until(approvals.pending)
        request.cancel()
        await asyncio.sleep(0.05)
        assert approvals.pending()[0]["waiting"] == 0
        await asyncio.sleep(1.1)
        assert approvals.pending() == []

    run(test)


def test_answers_that_cannot_be_taken():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        with pytest.raises(ApprovalError, match="no question 'nope' is pending"):
            approvals.answer("nope", "once")
        request = held(approvals)
        await until(approvals.pending)
        with pytest.raises(ApprovalError, match="expected one of once, run, always, deny"):
            approvals.answer(approvals.pending()[0]["id"], "yes")
        approvals.answer(approvals.pending()[0]["id"], "deny")
        await request

    run(test)


def test_a_grant_that_fails_is_no_answer():
    def refuse(grant: Grant) -> None:
        raise ValueError("not a domain")

    async def test() -> None:
        approvals = Approvals(refuse)
        request = held(approvals)
        await until(approvals.pending)
        with pytest.raises(ValueError, match="not a domain"):
            approvals.answer(approvals.pending()[0]["id"], "run")
        assert len(approvals.pending()) == 1  # still asked
        approvals.answer(approvals.pending()[0]["id"], "deny")
        await request

    run(test)


def test_questions_are_bounded():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        waiting = [
            held(approvals, Grant("allowed_domains", f"n{i}.test")) for i in range(MAX_QUESTIONS)
        ]
        await until(lambda: len(approvals.pending()) == MAX_QUESTIONS)
        refused = await held(approvals, Grant("allowed_domains", "one-more.test"))
        assert (refused.allow, refused.code) == (False, ErrorCode.HITL_REQUIRED)
        assert "refused at once" in refused.reason
        # A request for a question already asked still waits for it.
        joined = held(approvals, Grant("allowed_domains", "n0.test"))
        await until(lambda: approvals.pending()[0]["waiting"] == 2)
        for question in approvals.pending():
            approvals.answer(question["id"], "deny")
        await asyncio.gather(joined, *waiting)

    run(test)


def test_held_requests_are_bounded(monkeypatch):
    monkeypatch.setattr(approvals_module, "MAX_HELD", 4)

    async def test() -> None:
        approvals = Approvals(lambda g: None)
        waiting = [held(approvals) for _ in range(4)]
        await until(lambda: approvals.pending() and approvals.pending()[0]["waiting"] == 4)
        refused = await held(approvals)
        assert "refused at once" in refused.reason
        approvals.answer(approvals.pending()[0]["id"], "deny")
        await asyncio.gather(*waiting)

    run(test)
    assert MAX_HELD > MAX_QUESTIONS


def test_watchers_see_questions_asked_and_closed_and_a_slow_one_is_dropped():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        queue = approvals.watch()
        request = held(approvals)
        event = await queue.get()
        assert event["event"] == "asked" and event["question"]["grant"]["entry"] == "a.test"
        approvals.answer(event["question"]["id"], "once")
        assert (await queue.get())["event"] == "closed"
        await request
        slow = approvals.watch()
        for i in range(WATCH_QUEUE):
            await held(approvals, Grant("allowed_domains", f"w{i}.test"), timeout_s=0)
        events = [slow.get_nowait() for _ in range(slow.qsize())]
        assert events == [{"event": "dropped"}]
        approvals.unwatch(queue)

    run(test)
