"""Requests held for a person's approval (the policy's `approvals`, decided `approval_required`).

A held request waits for a question: every request that the same grant would allow waits for the
same one, so a client retrying or opening ten connections asks once. A person answers through
the agent's control socket (agent/control.py): `once` lets the waiting requests through, `run`
adds the grant to the policy in force until the agent stops, `always` is `run` for the agent
(the asker also writes it into the policy file), `deny` refuses them and every later request the
grant would allow. Unanswered, the question expires after the policy's `timeout_seconds` and its
requests are refused `HITL_REQUIRED`, saying how to allow them.

Nothing grows without bound: at most `MAX_QUESTIONS` questions and `MAX_HELD` held requests;
beyond that a request is refused at once. A held request costs the agent one coroutine and Envoy
one pending check, never a worker.
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
from intercept_proxy.policy.engine import Decision

MAX_QUESTIONS = 32
# A question's id: this many random bytes, in hexadecimal.
ID_BYTES = 4
MAX_HELD = 256
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


@dataclass(frozen=True)
class Grant:
    """What allowing a request for the run adds to the policy: a domain entry under a key."""

    key: str  # allowed_domains (a read) or unrestricted_domains
    entry: str  # host, or host:port for another port than 80 and 443

    def __str__(self) -> str:
        return f"{self.key}: [{self.entry}]"


@dataclass
class Question:
    id: str
    request: str  # method host:port path, never the query
    reason: str  # the policy's
    grant: Grant
    timeout_s: int
    deadline: float  # monotonic
    asked: float = field(default_factory=time.time)
    waiting: int = 0
    answer: asyncio.Future[Answer] = field(
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
    """An answer the agent cannot take (no such question, an unknown answer)."""


class Approvals:
    def __init__(self, grant: Callable[[Grant], None]) -> None:
        """`grant` adds a grant to the policy in force (for the agent's lifetime)."""
        self._grant = grant
        self._questions: dict[Grant, Question] = {}
        self._denied: set[Grant] = set()
        self._held = 0
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

    def _expire(self) -> None:
        now = time.monotonic()
        for grant, question in list(self._questions.items()):
            if question.deadline <= now:
                del self._questions[grant]
                self._tell("closed", question)

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
        if given in (Answer.RUN, Answer.ALWAYS):
            self._grant(question.grant)
        elif given is Answer.DENY:
            self._denied.add(question.grant)
        del self._questions[question.grant]
        question.answer.set_result(given)
        self._tell("closed", question)
        return question.as_dict()

    async def decide(
        self, decision: Decision, grant: Grant, target: str, path: str, timeout_s: int
    ) -> Decision:
        """What becomes of a request the policy decided `approval_required`: `target` is its
        method, host and port, as the policy's reasons begin."""
        if grant in self._denied:
            return Decision(
                False,
                DENIED_RULE,
                f"{target}: a person refused {grant} for as long as this sandbox runs",
            )
        self._expire()
        question = self._questions.get(grant)
        if self._held >= MAX_HELD or (question is None and len(self._questions) >= MAX_QUESTIONS):
            return Decision(
                False,
                decision.rule,
                f"{decision.reason}; {len(self._questions)} questions and {self._held} requests "
                "already wait for a person: this one is refused at once",
                ErrorCode.HITL_REQUIRED,
            )
        if question is None:
            question = Question(
                secrets.token_hex(ID_BYTES),
                target + path,
                decision.reason,
                grant,
                timeout_s,
                time.monotonic() + timeout_s,
            )
            self._questions[grant] = question
            self._tell("asked", question)
        self._held += 1
        question.waiting += 1
        try:
            remaining = question.deadline - time.monotonic()
            answer = await asyncio.wait_for(asyncio.shield(question.answer), max(0.0, remaining))
        except TimeoutError:
            self._expire()
            return Decision(
                False,
                decision.rule,
                f"{decision.reason}; no one answered within {question.timeout_s} s: answer "
                f"`intercept approvals allow {question.id}` while a request waits, or add "
                f"{grant} to the policy",
                ErrorCode.HITL_REQUIRED,
            )
        finally:
            self._held -= 1
            question.waiting -= 1
        if answer is Answer.DENY:
            return Decision(False, DENIED_RULE, f"{target}: a person refused it")
        if answer is Answer.ONCE:
            return Decision(True, ALLOWED_RULE, f"{target}: a person allowed it once")
        return Decision(True, ALLOWED_RULE, f"{target}: a person allowed {grant} for this run")
