"""The approvals broker: questions, answers, expiry, second looks and bounds (the data path's
side is in tests/sandbox/test_approvals.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from intercept_proxy.authz import approvals as approvals_module
from intercept_proxy.authz.approvals import (
    MAX_HELD_BYTES,
    MAX_QUESTIONS,
    MAX_SHOWN,
    WATCH_QUEUE,
    ApprovalError,
    Approvals,
    shown,
)
from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.approvals import Grant
from intercept_proxy.policy.engine import Decision

READ = Grant("allowed_domains", "a.test")
WRITE = Grant("unrestricted_domains", "a.test")


def asked(grant: Grant = READ) -> Decision:
    reason = f"GET {grant.entry}:443 is not allowed; a person may allow it (approvals)"
    return Decision(False, "approval_required", reason, ErrorCode.HITL_REQUIRED, grant)


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 10))


def held(
    approvals: Approvals,
    grant: Grant = READ,
    path: str = "/p",
    timeout_s: int = 5,
    body_bytes: int = 0,
) -> asyncio.Task[Decision]:
    decide = approvals.decide(
        asked(grant), f"GET {grant.entry}:443", path, body_bytes, timeout_s, {"path": path}
    )
    return asyncio.create_task(decide)


async def until(condition: Callable[[], Any]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def waiting(approvals: Approvals, count: int) -> Callable[[], bool]:
    return lambda: sum(q["waiting"] for q in approvals.pending()) == count


def test_once_lets_that_requests_waiters_through_and_grants_nothing():
    granted: list[Grant] = []

    async def test() -> None:
        approvals = Approvals(granted.append)
        same = [held(approvals) for _ in range(3)]
        other = held(approvals, path="/other?secret=1")
        await until(waiting(approvals, 4))
        first, second = approvals.pending()
        assert (first["request"], first["waiting"]) == ("GET a.test:443/p", 3)
        assert first["grant"] == {"key": "allowed_domains", "entry": "a.test"}
        assert second["request"] == "GET a.test:443/other"  # never the query
        approvals.answer(first["id"], "once")
        decisions = await asyncio.gather(*same)
        assert {(d.allow, d.rule, d.reason) for d in decisions} == {
            (True, "approved", "GET a.test:443: a person allowed it once")
        }
        assert [q["id"] for q in approvals.pending()] == [second["id"]]  # still asked
        approvals.answer(second["id"], "deny")
        assert not (await other).allow

    run(test)
    assert granted == []


@pytest.mark.parametrize("given", ["run", "always"])
def test_run_and_always_grant_for_the_run_and_settle_every_question_of_the_grant(given):
    granted: list[Grant] = []

    async def test() -> None:
        approvals = Approvals(granted.append)
        requests = [held(approvals, path=p) for p in ("/one", "/two")]
        write = held(approvals, WRITE)
        await until(waiting(approvals, 3))
        approvals.answer(approvals.pending()[0]["id"], given)
        for decision in await asyncio.gather(*requests):
            assert decision.allow and decision.reason.endswith(
                "allowed allowed_domains: [a.test] for this run"
            )
        assert [q["grant"]["key"] for q in approvals.pending()] == ["unrestricted_domains"]
        write.cancel()

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
        later = await held(approvals, path="/elsewhere")
        assert (
            later.rule == "approval_denied" and "for as long as this sandbox runs" in later.reason
        )
        assert approvals.pending() == []
        # Another grant for the same host (a write) is another question.
        write = held(approvals, WRITE)
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
        assert decision.reason.startswith(asked().reason + "; no one answered within 1 s")
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


def test_a_changed_policy_settles_what_it_no_longer_asks():
    async def test() -> None:
        approvals = Approvals(lambda g: None)
        kept, changed = held(approvals, path="/kept"), held(approvals, WRITE, path="/changed")
        await until(waiting(approvals, 2))
        allowed = Decision(True, "unrestricted_domains", "POST a.test:443: a.test is in ...")

        def evaluate(input_doc: dict[str, Any]) -> Decision:
            return asked() if input_doc["path"] == "/kept" else allowed

        approvals.recheck(evaluate)
        assert await changed == allowed
        assert [q["request"] for q in approvals.pending()] == ["GET a.test:443/kept"]
        kept.cancel()

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


def test_a_grant_the_policy_cannot_take_is_no_answer():
    def refuse(grant: Grant) -> None:
        raise ValueError("the policy's files are invalid now")

    async def test() -> None:
        approvals = Approvals(refuse)
        request = held(approvals)
        await until(approvals.pending)
        with pytest.raises(ApprovalError, match="was not added to the policy: the policy's files"):
            approvals.answer(approvals.pending()[0]["id"], "run")
        assert len(approvals.pending()) == 1  # still asked
        approvals.answer(approvals.pending()[0]["id"], "deny")
        await request

    run(test)


def test_questions_held_requests_and_held_bytes_are_bounded(monkeypatch):
    monkeypatch.setattr(approvals_module, "MAX_HELD", 40)

    async def test() -> None:
        approvals = Approvals(lambda g: None)
        names = [Grant("allowed_domains", f"n{i}.test") for i in range(MAX_QUESTIONS)]
        requests = [held(approvals, g) for g in names]
        await until(lambda: len(approvals.pending()) == MAX_QUESTIONS)
        refused = await held(approvals, Grant("allowed_domains", "one-more.test"))
        assert (refused.allow, refused.code) == (False, ErrorCode.HITL_REQUIRED)
        assert "refused at once" in refused.reason
        # A request for a question already asked still waits for it, up to MAX_HELD...
        requests += [held(approvals, names[0]) for _ in range(8)]
        await until(waiting(approvals, 40))
        assert "refused at once" in (await held(approvals, names[0])).reason
        for question in approvals.pending():
            approvals.answer(question["id"], "deny")
        await asyncio.gather(*requests)
        # ... and MAX_HELD_BYTES of bodies.
        big = held(approvals, body_bytes=MAX_HELD_BYTES)
        await until(approvals.pending)
        assert "refused at once" in (await held(approvals, WRITE, body_bytes=1)).reason
        big.cancel()

    run(test)


def test_what_a_question_shows_is_escaped_and_bounded():
    assert shown("GET a.test:443/\u202eevil\x1b[8m") == "GET a.test:443/\\u202eevil\\x1b[8m"
    assert len(shown("/" + "x" * 1000)) == MAX_SHOWN


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
