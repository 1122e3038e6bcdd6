"""Child processes of the supervisor: started with a parent-death signal (they die with it, even
when it is SIGKILLed), their output in a log file, restarted when they exit unasked."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    env: dict[str, str] | None = None
    stop_timeout: float = 10.0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%F %T')} starting {self.name}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
            )
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self, stopping: bool) -> None:
        """Restart the process if it exited (with a back-off growing with each restart)."""
        if self.process is None or stopping:
            return
        status = self.process.poll()
        if status is None:
            return
        now = time.monotonic()
        if not self.next_start:
            self.exits.append(status)
            # A process that ran for a minute starts again at once; one that keeps failing waits.
            if now - self.started_at > 60:
                self.restarts = 0
            delay = min(RESTART_BACKOFF_MAX, 0.5 * 2**self.restarts)
            self.next_start = now + delay
            log.warning("%s exited with status %s; restarting in %.1fs", self.name, status, delay)
            return
        if now >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.start()

    def signal(self, signum: int) -> None:
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self, timeout: float | None = None) -> None:
        if self.process is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(self.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", self.name)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
        log.info("stopped %s (status %s)", self.name, self.process.returncode)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A plain environment for the engines: no proxy, no kubeconfig of the caller's."""
    # The system's directories always: the node runs ip, iptables, nsenter, setpriv.
    system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    path = [p for p in os.environ.get("PATH", "").split(":") if p]
    path += [p for p in system if p not in path]
    env = {"PATH": ":".join(path), "LANG": "C.UTF-8"}
    return env | (extra or {})
