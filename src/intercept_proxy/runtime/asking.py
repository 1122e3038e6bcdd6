"""`intercept run --ask`: the questions of the sandbox's agent asked on the caller's terminal.

One thread follows the agent's questions (its control socket's watch), another asks them one at
a time, the oldest first, taking the terminal's keyboard from the workload while it asks. A
question answered elsewhere (`intercept approvals`) or expired while it is asked is dropped.
"Always" shows the policy file's diff and writes it only once the caller agrees.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from intercept_proxy.agent import control
from intercept_proxy.agent.cli import answer
from intercept_proxy.authz.approvals import DROPPED, Answer
from intercept_proxy.policy import edit
from intercept_proxy.policy.model import PolicyError
from intercept_proxy.runtime.terminal import PseudoTerminal

PREFIX = "[intercept] "
_KEYS = {"o": Answer.ONCE, "r": Answer.RUN, "a": Answer.ALWAYS, "d": Answer.DENY}


class Asker:
    def __init__(
        self,
        socket: Path,
        terminal: Callable[[], PseudoTerminal | None],
        policy_file: Path | None,
        stop: threading.Event,
    ) -> None:
        """`terminal` gives the workload's terminal once it has one."""
        self._socket = socket
        self._terminal = terminal
        self._policy_file = policy_file
        self._stop = stop
        self._pending: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()

    def start(self) -> None:
        threading.Thread(target=self._follow, name="approvals-watch", daemon=True).start()
        threading.Thread(target=self._ask_all, name="approvals-ask", daemon=True).start()

    def _follow(self) -> None:
        """Keep `_pending` as the agent's questions, watching again when the watch ends."""
        while not self._stop.is_set():
            try:
                for message in control.watch(self._socket):
                    self._update(message)
                    if message.get("event") == DROPPED:
                        break
            except (control.ControlError, OSError):
                pass  # the agent is not up yet, or restarted
            self._stop.wait(0.2)

    def _update(self, message: dict[str, Any]) -> None:
        with self._changed:
            if "questions" in message:
                self._pending = {q["id"]: q for q in message["questions"]}
            elif message.get("event") == "asked":
                self._pending[message["question"]["id"]] = message["question"]
            elif message.get("event") == "closed":
                self._pending.pop(message["question"]["id"], None)
            self._changed.notify_all()

    def _is_pending(self, question_id: str) -> bool:
        with self._changed:
            return question_id in self._pending

    def _ask_all(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stop.is_set(), 0.5)
                question = next(iter(self._pending.values()), None)
            terminal = self._terminal()
            if question is None or terminal is None:
                continue
            with terminal.keyboard():
                given = self._ask(question)
            if given is None:
                continue
            try:
                answer([self._socket], question["id"], given)
            except control.ControlError as e:
                _say(f"not answered: {e}")
            with self._changed:
                self._pending.pop(question["id"], None)

    def _ask(self, question: dict[str, Any]) -> Answer | None:
        """The caller's answer, or None if the question closed meanwhile."""
        grant = question["grant"]
        _say(
            f"{question['request']} needs your approval ({question['waiting']} waiting, "
            f"{question['expires_in_s']} s left)"
        )
        always = f", always: also add it to {self._policy_file} (a)" if self._policy_file else ""
        _say(
            f"allow once (o), for this run: {grant['key']}: [{grant['entry']}] (r){always}, "
            "deny (d)? ",
            end="",
        )
        while True:
            key = self._key(question["id"])
            if key is None:
                _say("(answered elsewhere or expired)")
                return None
            given = _KEYS.get(key)
            if given is Answer.ALWAYS and self._policy_file is not None:
                _echo("a")
                if self._write(grant, question["id"]):
                    return given
                _say("allow once (o), for this run (r), deny (d)? ", end="")
            elif given is not None and given is not Answer.ALWAYS:
                _echo(key)
                return given

    def _write(self, grant: dict[str, str], question_id: str) -> bool:
        """Show the policy file's change, write it if the caller agrees."""
        assert self._policy_file is not None
        try:
            before = self._policy_file.read_text()
            after = edit.add_entry(before, grant["key"], grant["entry"], str(self._policy_file))
        except (OSError, PolicyError) as e:
            _say(f"cannot add it to the policy file: {e}")
            return False
        for line in edit.diff(self._policy_file, before, after).splitlines():
            _say(line)
        _say(f"write {self._policy_file}? (y/n) ", end="")
        key = self._key(question_id)
        _echo(key or "")
        if key != "y":
            return False
        try:
            edit.write(self._policy_file, after)
        except OSError as e:
            _say(f"cannot write {self._policy_file}: {e}")
            return False
        return True

    def _key(self, question_id: str) -> str | None:
        """One key typed at our terminal; None once the question is no longer pending."""
        stdin = sys.stdin.fileno()
        while self._is_pending(question_id) and not self._stop.is_set():
            readable, _, _ = select.select([stdin], [], [], 0.2)
            if readable:
                data = os.read(stdin, 1)
                if not data:
                    return None
                return data.decode(errors="replace").lower()
        return None


def _say(text: str, end: str = "\r\n", prefix: str = PREFIX) -> None:
    """Our terminal is raw while the workload has its own: lines end in CR LF."""
    with contextlib.suppress(OSError):
        os.write(sys.stdout.fileno(), f"{prefix}{text}{end}".encode())


def _echo(key: str) -> None:
    _say(key, prefix="")
