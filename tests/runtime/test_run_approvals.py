"""`intercept run --ask`: the approvals asked on the caller's terminal (a real pseudo-terminal,
typed into as a person would), the policy file edited only once the person agrees."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.workdirs import operator_workdir

pytestmark = pytest.mark.netns

LAB = "hosts:\n" + "".join(f"  - name: {h}.ask.example\n" for h in ("run", "always", "deny"))
POLICY = """\
# The operator's policy: reads of nothing yet.
allowed_domains: []
approvals:
  hosts: ["*.ask.example"]
  timeout_seconds: 60
"""
SCRIPT = " ; ".join(
    f"curl -sS -o /dev/null -w 'got {label} %{{http_code}}\\n' {options} https://{url}"
    for label, options, url in (
        ("1", "", "run.ask.example/1"),
        ("2", "", "run.ask.example/2"),
        ("3", "", "always.ask.example/3"),
        ("4", "-X POST", "deny.ask.example/4"),
    )
)


class Terminal:
    """A program on a pseudo-terminal of ours: what it shows, what we type."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.shown = ""

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the output since the last match holds `pattern`; consume up to it."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.shown)):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not shown; the terminal shows:\n{self.shown}"
            readable, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if readable:
                try:
                    self.shown += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the program ended
                    assert found, f"{pattern!r} not shown; the terminal shows:\n{self.shown}"
        self.shown = self.shown[found.end() :]
        return found

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.process.wait(60)
        finally:
            os.close(self.master)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with operator_workdir("intercept-ask-", {"lab.yaml": LAB, "policy.yaml": POLICY}) as path:
        yield path


def test_ask_on_the_terminal(workdir):
    argv = [sys.executable, "-m", "intercept_proxy", "run", "--ask", "--lab", "lab.yaml"]
    argv += ["--policy", "policy.yaml", "--", "sh", "-c", SCRIPT]
    terminal = Terminal(argv, workdir)
    try:
        terminal.expect(r"\[intercept\] GET run\.ask\.example:443/1 needs your approval")
        terminal.expect(r"run: allowed_domains: \[run\.ask\.example\] until the sandbox stops")
        terminal.expect(r"answer \(once, run, deny, always, then Enter\): ")
        # What a terminal answers by itself (a cursor position report, a colour) and a single
        # key answer nothing: a whole word and Enter do.
        terminal.type("\x1b[12;40R\x9b13;1R\x1b]11;rgb:0000/0000/0000\x07r\r")
        terminal.expect(r"answer \(once, run, deny, always, then Enter\): ")
        terminal.type("run\r")
        terminal.expect("got 1 200")
        terminal.expect("got 2 200")  # granted for the run: not asked again
        terminal.expect(r"GET always\.ask\.example:443/3 needs your approval")
        terminal.type("always\r")
        diff = terminal.expect(
            r"(?s)--- policy\.yaml \(now\).*write policy\.yaml, and allow the request\? \(yes, no\)"
        )
        assert "-allowed_domains: []" in diff.group(0)
        assert "+allowed_domains: [always.ask.example]" in diff.group(0)
        terminal.type("yes\r")
        terminal.expect("got 3 200")
        terminal.expect(r"POST deny\.ask\.example:443/4 needs your approval")
        terminal.expect(r"deny: unrestricted_domains: \[deny\.ask\.example\] refused")
        terminal.type("deny\r")
        terminal.expect("got 4 403")
    finally:
        status = terminal.close()
    assert status == 0, terminal.shown
    assert (workdir / "policy.yaml").read_text() == POLICY.replace(
        "allowed_domains: []", "allowed_domains: [always.ask.example]"
    )


def test_ask_needs_a_terminal_and_a_policy_that_asks(workdir):
    argv = [sys.executable, "-m", "intercept_proxy", "run", "--ask", "--lab", "lab.yaml"]
    done = subprocess.run(
        [*argv, "--policy", "policy.yaml", "--", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--ask needs a terminal" in done.stderr
    (workdir / "plain.yaml").write_text("allowed_domains: [run.ask.example]\n")
    terminal = Terminal([*argv, "--policy", "plain.yaml", "--", "true"], workdir)
    terminal.expect("--ask: the policy has no approvals, so nothing is ever asked")
    assert terminal.close() == 2
