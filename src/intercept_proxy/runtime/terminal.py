"""A terminal of the workload's own, relayed to ours (what `docker run -t` does).

Handing the caller's terminal to the workload would let it type into the caller's shell once
it ends (TIOCSTI) and signal the caller's jobs; a pseudo-terminal of its own gives it a real
terminal (line editing, Ctrl-C, window size, job control) and nothing more.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator


class PseudoTerminal:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self._copy_size()
        # Set while the sandbox asks the caller something: what they type is not the workload's,
        # and what the workload prints waits (it could draw a prompt of its own, or make our
        # terminal type answers: a cursor position report).
        self.asking = threading.Event()
        self._paused = threading.Event()  # the relay saw it: it copies nothing either way

    def _copy_size(self) -> None:
        with contextlib.suppress(OSError):
            size = fcntl.ioctl(sys.stdin.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    @contextlib.contextmanager
    def relaying(self) -> Iterator[None]:
        """Our terminal raw, bytes copied both ways, window size followed, until the workload's
        side closes; the terminal restored whatever happens."""
        os.close(self.slave)  # the workload holds it now
        saved = termios.tcgetattr(sys.stdin.fileno())
        previous = signal.signal(signal.SIGWINCH, lambda s, f: self._copy_size())
        tty.setraw(sys.stdin.fileno())
        done = threading.Event()
        pump = threading.Thread(target=self._pump, args=(done,), daemon=True)
        pump.start()
        try:
            yield
        finally:
            pump.join(2)
            done.set()
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous)
            os.close(self.master)

    @contextlib.contextmanager
    def keyboard(self) -> Iterator[bool]:
        """Our terminal for the caller of this alone while it lasts, its input so far discarded
        (typed ahead, or the terminal's answers to what the workload printed); False if the
        relay did not let go of it (then it must not be read)."""
        self._paused.clear()
        self.asking.set()
        try:
            paused = self._paused.wait(1.0)
            if paused:
                time.sleep(0.2)  # a terminal's late answers land before the flush
                termios.tcflush(sys.stdin.fileno(), termios.TCIFLUSH)
            yield paused
        finally:
            self.asking.clear()

    def _pump(self, done: threading.Event) -> None:
        stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
        while not done.is_set():
            if self.asking.is_set():
                self._paused.set()
                done.wait(0.05)
                continue
            self._paused.clear()
            readable, _, _ = select.select([stdin, self.master], [], [], 0.2)
            if stdin in readable:
                data = os.read(stdin, 4096)
                if data:
                    os.write(self.master, data)
            if self.master in readable:
                try:
                    data = os.read(self.master, 65536)
                except OSError as e:  # EIO: the workload's side is closed
                    if e.errno == errno.EIO:
                        return
                    raise
                if not data:
                    return
                os.write(stdout, data)
