"""`intercept run --ask`: the questions of the sandbox's agent asked on the caller's terminal.

One thread follows the agent's questions (its control socket's watch), another asks them one at
a time, the oldest first. While it asks, the terminal is the caller's alone: the workload's
output waits and nothing typed reaches it, and what was typed before is discarded. An answer is
a whole word and Enter (`once`, `run`, `always`, `deny`); escape sequences are skipped, so
neither a terminal's automatic replies nor stray keys answer anything. A question answered
elsewhere (`intercept approvals`) or expired while it is asked is dropped. `always` shows the
policy file's diff and writes it only once the caller types `yes`.
"""

from __future__ import annotations

import contextlib
import functools
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
ESC, CTRL_C, BACKSPACES, ENTER = 0x1B, 0x03, (0x08, 0x7F), (0x0A, 0x0D)
# 8-bit introducers of sequences (CSI, OSC, DCS, SOS, PM, APC), as their 7-bit forms' letters.
C1 = {0x9B: "[", 0x9D: "]", 0x90: "P", 0x98: "X", 0x9E: "^", 0x9F: "_"}
# What the workload may have left set, undone before we write: a soft reset (scroll region,
# modes, colours), the ASCII character set, the cursor shown.
TERMINAL_RESET = "\x1b[!p\x1b(B\x0f\x1b[0m\x1b[?25h"
MAX_WORD = 16
RELAY_GRACE_S = 0.5


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
        self._skipped: set[str] = set()  # left to expire (Ctrl-C)
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
                self._skipped &= self._pending.keys()
            elif message.get("event") == "asked":
                self._pending[message["question"]["id"]] = message["question"]
            elif message.get("event") == "closed":
                self._pending.pop(message["question"]["id"], None)
                self._skipped.discard(message["question"]["id"])
            self._changed.notify_all()

    def _is_pending(self, question_id: str) -> bool:
        with self._changed:
            return question_id in self._pending

    def _next(self) -> dict[str, Any] | None:
        with self._changed:
            self._changed.wait_for(lambda: self._askable() or self._stop.is_set(), 0.5)
            return self._askable()

    def _askable(self) -> dict[str, Any] | None:
        return next((q for i, q in self._pending.items() if i not in self._skipped), None)

    def _ask_all(self) -> None:
        while not self._stop.is_set():
            question = self._next()
            terminal = self._terminal()
            if question is None or terminal is None:
                self._stop.wait(0.2)
                continue
            with terminal.keyboard() as ours:
                if not ours:
                    continue
                _say(TERMINAL_RESET, prefix="")
                self._ask(question)
            with self._changed:  # answered, or left: not asked again before the agent says
                self._skipped.add(question["id"])
            # The workload's output waited meanwhile: it goes out before the next question.
            self._stop.wait(RELAY_GRACE_S)

    def _ask(self, question: dict[str, Any]) -> None:
        grant = question["grant"]
        _say(
            f"{question['request']} needs your approval ({question['waiting']} waiting, "
            f"{question['expires_in_s']} s left)"
        )
        _say(f"the policy says: {question['reason']}")
        choices = {
            "once": f"once: {question['request']} alone",
            "run": f"run: {grant['key']}: [{grant['entry']}] until the sandbox stops",
            "deny": f"deny: {grant['key']}: [{grant['entry']}] refused until it stops",
        }
        if self._policy_file is not None:
            choices["always"] = f"always: run, and written into {self._policy_file}"
        for line in choices.values():
            _say(f"  {line}")
        while True:
            _say("answer (" + ", ".join(choices) + ", then Enter): ", end="")
            word = self._word(question["id"])
            if word is None:
                _say("(answered elsewhere, expired, or left to expire)")
                return
            if word in choices:
                break
        try:
            if word == Answer.ALWAYS:
                self._always(question)
            else:
                answer(self._socket, question["id"], Answer(word))
        except (control.ControlError, PolicyError, OSError) as e:
            _say(f"not answered: {e}")

    def _always(self, question: dict[str, Any]) -> None:
        assert self._policy_file is not None
        grant = question["grant"]

        def confirm(shown_diff: str) -> bool:
            for line in shown_diff.splitlines():
                _say(line)
            _say(f"write {self._policy_file}, and allow the request? (yes, no): ", end="")
            return self._word(question["id"]) == "yes"

        apply = functools.partial(answer, self._socket, question["id"], Answer.ALWAYS)
        if not edit.add_to_file(self._policy_file, grant["key"], grant["entry"], confirm, apply):
            _say("not written, not answered")

    def _word(self, question_id: str) -> str | None:
        """A word typed at our terminal, ended by Enter (escape sequences skipped); None once
        the question is no longer pending, or on Ctrl-C."""
        stdin = sys.stdin.fileno()
        typed = bytearray()
        escape: bytearray | None = None
        while self._is_pending(question_id) and not self._stop.is_set():
            readable, _, _ = select.select([stdin], [], [], 0.2)
            if not readable:
                continue
            data = os.read(stdin, 64)
            if not data:
                return None
            for byte in data:
                if escape is not None:
                    escape.append(byte)
                    if _escape_ended(escape):
                        escape = None
                elif byte == ESC:
                    escape = bytearray()
                elif byte in C1:
                    escape = bytearray(C1[byte].encode())
                elif byte == CTRL_C:
                    return None
                elif byte in ENTER:
                    _say("", prefix="")
                    return typed.decode()
                elif byte in BACKSPACES and typed:
                    typed.pop()
                    _say("\b \b", end="", prefix="")
                elif 0x61 <= byte <= 0x7A and len(typed) < MAX_WORD:  # a to z only
                    typed.append(byte)
                    _say(chr(byte), end="", prefix="")
        return None


def _escape_ended(sequence: bytearray) -> bool:
    """Whether the bytes after an ESC make a whole sequence: CSI ends with a final byte, OSC and
    DCS with BEL or ESC backslash, any other with its one byte."""
    if not sequence:
        return False
    kind = sequence[0]
    if kind == ord("["):
        return len(sequence) > 1 and 0x40 <= sequence[-1] <= 0x7E
    if kind in b"]PX^_":
        return sequence[-1] in (0x07, 0x9C) or sequence.endswith(b"\x1b\\")
    return True


def _say(text: str, end: str = "\r\n", prefix: str = PREFIX) -> None:
    """Our terminal is raw while the workload has its own: lines end in CR LF; every line of ours
    starts in the default colours, whatever the workload left set."""
    with contextlib.suppress(OSError):
        reset = "\x1b[0m" if prefix else ""
        os.write(sys.stdout.fileno(), f"{reset}{prefix}{text}{end}".encode())
