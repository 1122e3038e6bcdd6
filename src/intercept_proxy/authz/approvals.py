"""Requests held for a person's approval (the policy's `approvals`: decisions that carry a grant).

A held request waits for a question about exactly what it is: its method, host, port and path
(never its query). The same request again (a client retrying, or opening ten connections) waits
for the same question. A person answers through the agent's control socket (agent/control.py):
`once` lets the requests of that question through; `run` adds the question's grant to the policy
in force until the agent stops, and lets through every request waiting for that grant;
`always` is `run` for the agent (whoever answers also writes the grant into the policy file);
`deny` refuses every request waiting for that grant, and every later one. Unanswered, a question
expires after the policy's `timeout_seconds` and its requests are refused `HITL_REQUIRED`, saying
how to allow them. When the policy changes, each question is judged again: one the new policy
decides otherwise is answered by it.

Nothing grows without bound: at most `MAX_QUESTIONS` questions, `MAX_HELD` held requests and
`MAX_HELD_BYTES` of their bodies (Envoy has read them, and keeps them while they wait); beyond, a
request is refused at once. A held request costs the agent one coroutine and Envoy one pending
check, never a worker.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.approvals import Grant
from intercept_proxy.policy.engine import Decision

MAX_QUESTIONS = 32
MAX_HELD = 256
MAX_HELD_BYTES = 64 * 1024 * 1024
# A question's id: this many random bytes, in hexadecimal.
ID_BYTES = 4
# What of a request a question shows (the workload wrote it): printable ASCII, this long at most.
MAX_SHOWN = 300
# The bounded queue of each watcher (an asker's terminal); a watcher too slow to read is dropped.
WATCH_QUEUE = 64
# The last event of a watcher that fell too far behind (it may watch again).
DROPPED = "dropped"
ALLOWED_RULE = "approved"
DENIED_RULE = "approval_denied"


class Answer(StrEnum):
    ONCE = "once"
    RUN = "run"
    ALWAYS = "always"
    DENY = "deny"


# What settles a question: a person's answer, or the decision of a policy that changed.
Outcome = Answer | Decision
# Judges a request's input document under the policy in force.
Evaluate = Callable[[dict[str, Any]], Decision]


def shown(text: str) -> str:
    """`text` as a person may safely read it: no control or non-ASCII character (each escaped),
    at most MAX_SHOWN characters."""
    escaped = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)
    return escaped if len(escaped) <= MAX_SHOWN else escaped[: MAX_SHOWN - 3] + "..."


@dataclass
class Question:
    id: str
    request: str  # method host:port path, escaped; never the query
    reason: str  # the policy's
    grant: Grant
    input_doc: dict[str, Any]  # to judge it again when the policy changes
    timeout_s: int
    deadline: float  # monotonic
    waiting: int = 0
    settled: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request": self.request,
            "reason": self.reason,
            "grant": {"key": self.grant.key, "entry": self.grant.entry},
            "waiting": self.waiting,
            "expires_in_s": max(0, round(self.deadline - time.monotonic())),
        }


class ApprovalError(ValueError):
    """An answer the agent cannot take (no such question, an unknown answer, a grant the policy
    could not take)."""


class Approvals:
    def __init__(self, grant: Callable[[Grant], None]) -> None:
        """`grant` adds a grant to the policy in force (for the agent's lifetime), or raises
        ValueError saying why it could not."""
        self._grant = grant
        # By grant and request (method, host, port, path: as sent, not as shown).
        self._questions: dict[tuple[Grant, str], Question] = {}
        self._denied: set[Grant] = set()
        self._held = 0
        self._held_bytes = 0
        self._watchers: set[asyncio.Queue[dict[str, Any]]] = set()

    def pending(self) -> list[dict[str, Any]]:
        self._expire()
        return [q.as_dict() for q in self._questions.values()]

    def watch(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of events: `{"event": "asked" | "closed", "question": ...}`, or a last
        `{"event": DROPPED}` if it falls `WATCH_QUEUE` events behind; `unwatch` it."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(WATCH_QUEUE)
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._watchers.discard(queue)

    def _tell(self, event: str, question: Question) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait({"event": event, "question": question.as_dict()})
            except asyncio.QueueFull:  # it stopped reading: told so, it gets no more
                self._watchers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"event": DROPPED})

    def _close(self, question: Question, outcome: Outcome | None = None) -> None:
        key = next(k for k, q in self._questions.items() if q is question)
        del self._questions[key]
        if outcome is not None:
            question.settled.set_result(outcome)
        self._tell("closed", question)

    def _expire(self) -> None:
        now = time.monotonic()
        for question in list(self._questions.values()):
            if question.deadline <= now:
                self._close(question)

    def answer(self, question_id: str, answer: str) -> dict[str, Any]:
        """Answer a pending question; its description, as it was."""
        try:
            given = Answer(answer)
        except ValueError:
            choices = ", ".join(a.value for a in Answer)
            raise ApprovalError(f"answer {answer!r}: expected one of {choices}") from None
        self._expire()
        question = next((q for q in self._questions.values() if q.id == question_id), None)
        if question is None:
            raise ApprovalError(f"no question {question_id!r} is pending (answered or expired)")
        described = question.as_dict()
        if given is Answer.ONCE:
            self._close(question, given)
            return described
        # Out of the way of the policy's own second look (recheck), which the grant triggers.
        answered = {k: q for k, q in self._questions.items() if q.grant == question.grant}
        for key in answered:
            del self._questions[key]
        if given is Answer.DENY:
            self._denied.add(question.grant)
        else:
            try:
                self._grant(question.grant)
            except ValueError as e:
                self._questions |= answered
                raise ApprovalError(f"{question.grant} was not added to the policy: {e}") from None
        for other in answered.values():
            other.settled.set_result(given)
            self._tell("closed", other)
        return described

    def recheck(self, evaluate: Evaluate) -> None:
        """Judge every question again under a changed policy: one it no longer asks (allowed,
        denied, or another grant) is settled by its new decision."""
        for question in list(self._questions.values()):
            decision = evaluate(question.input_doc)
            if decision.grant != question.grant:
                self._close(question, decision)

    def _refused(self, decision: Decision) -> Decision | None:
        """The denial of a request that may not wait, if it may not."""
        if decision.grant in self._denied:
            return Decision(
                False,
                DENIED_RULE,
                f"{decision.reason}; a person refused {decision.grant} for as long as this "
                "sandbox runs",
            )
        return None

    async def decide(
        self,
        decision: Decision,
        target: str,
        path: str,
        body_bytes: int,
        timeout_s: int,
        input_doc: dict[str, Any],
    ) -> Decision:
        """What becomes of a request the policy decided with a grant: `target` is its method,
        host and port, as the policy's reasons begin; `body_bytes` what Envoy holds of it."""
        grant = decision.grant
        assert grant is not None
        refused = self._refused(decision)
        if refused is not None:
            return refused
        self._expire()
        request = target + path.split("?", 1)[0]  # the key; what a person reads is escaped
        question = self._questions.get((grant, request))
        full = (
            self._held >= MAX_HELD
            or self._held_bytes + body_bytes > MAX_HELD_BYTES
            or (question is None and len(self._questions) >= MAX_QUESTIONS)
        )
        if full:
            return Decision(
                False,
                decision.rule,
                f"{decision.reason}; {len(self._questions)} questions and {self._held} requests "
                "already wait for a person: this one is refused at once",
                ErrorCode.HITL_REQUIRED,
                grant,
            )
        if question is None:
            question = Question(
                secrets.token_hex(ID_BYTES),
                shown(request),
                decision.reason,
                grant,
                input_doc,
                timeout_s,
                time.monotonic() + timeout_s,
            )
            self._questions[(grant, request)] = question
            self._tell("asked", question)
        self._held += 1
        self._held_bytes += body_bytes
        question.waiting += 1
        try:
            remaining = question.deadline - time.monotonic()
            outcome = await asyncio.wait_for(asyncio.shield(question.settled), max(0.0, remaining))
        except TimeoutError:
            self._expire()
            return Decision(
                False,
                decision.rule,
                f"{decision.reason}; no one answered within {question.timeout_s} s: answer "
                f"`intercept approvals allow {question.id}` while a request waits, or add "
                f"{grant} to the policy",
                ErrorCode.HITL_REQUIRED,
                grant,
            )
        finally:
            self._held -= 1
            self._held_bytes -= body_bytes
            question.waiting -= 1
        if isinstance(outcome, Decision):
            return outcome
        if outcome is Answer.DENY:
            return Decision(False, DENIED_RULE, f"{target}: a person refused {grant}")
        if outcome is Answer.ONCE:
            return Decision(True, ALLOWED_RULE, f"{target}: a person allowed it once")
        return Decision(True, ALLOWED_RULE, f"{target}: a person allowed {grant} for this run")
