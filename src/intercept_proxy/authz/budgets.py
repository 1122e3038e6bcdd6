"""The policy's budgets: requests and uploaded bytes to a host over the agent's lifetime (a run, a
pod), charged when the agent allows a request, before it is forwarded. A request that would
overspend is refused, and charges nothing.

Routes send every request to a budgeted host to the agent with its body read first (its length
known, see xds/routes.py); a request whose body length the agent cannot know (another spelling
of the host, past the routes that read bodies) is refused rather than counted as nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from intercept_proxy.decision import ErrorCode
from intercept_proxy.policy.engine import Decision
from intercept_proxy.policy.limits import Budget, host_matches

RULE = "budget_exceeded"
# What a budget has spent: a callback for metrics (the budget, requests, bytes).
Observer = Callable[[Budget, int, int], None]


@dataclass(frozen=True)
class Upload:
    """What a request would spend: its host (lower case, no port), its body's length (None:
    there may be a body whose length is unknown)."""

    host: str
    length: int | None


class Ledger:
    def __init__(self, observe: Observer = lambda budget, requests, sent: None) -> None:
        # Keyed by the budget itself: a changed budget starts again from nothing.
        self._spent: dict[Budget, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._observe = observe

    def charge(self, budgets: tuple[Budget, ...], upload: Upload, target: str) -> Decision | None:
        """Charge the request to its host's budget; the refusal if it would overspend it."""
        budget = next((b for b in budgets if host_matches(b.host, upload.host)), None)
        if budget is None:
            return None
        with self._lock:
            for stale in self._spent.keys() - set(budgets):  # a changed budget starts again
                del self._spent[stale]
            requests, sent = self._spent.get(budget, (0, 0))
            if upload.length is None and budget.upload_bytes is not None:
                why = (
                    "what it sends cannot be counted (a body of unknown length, or a protocol "
                    "upgrade): send it with a length"
                )
            elif budget.requests is not None and requests + 1 > budget.requests:
                why = f"{requests} of {budget.requests} requests are spent"
            elif budget.upload_bytes is not None and sent + (upload.length or 0) > (
                budget.upload_bytes
            ):
                why = (
                    f"{sent} of {budget.upload_bytes} bytes are spent, and it sends {upload.length}"
                )
            else:
                self._spent[budget] = (requests + 1, sent + (upload.length or 0))
                self._observe(budget, requests + 1, sent + (upload.length or 0))
                return None
        return Decision(
            False,
            RULE,
            f"{target}: the budget of {budget.host} for this run allows no more: {why}",
            ErrorCode.BUDGET_EXCEEDED,
        )
