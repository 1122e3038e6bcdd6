"""Signals that ask a long-running command to stop, delivered to a threading.Event safely.

A Python signal handler runs in the main thread between any two of its bytecodes: inside
`event.wait()` too, which holds the lock `event.set()` takes. A handler that sets the event (or
logs: logging takes its own locks) can then wait forever on its own thread (a gateway did). The
handler here only writes the signal's number to a pipe; a thread of its own sets the event."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

Handler = Callable[[int, object], None]


@contextlib.contextmanager
def setting(
    event: threading.Event,
    signals: Iterable[int],
    said: Callable[[int], None] = lambda signum: None,
) -> Iterator[None]:
    """While in the block, each of `signals` sets `event` (after `said(signum)`, in that
    thread); the handlers before come back after it."""
    read, write = os.pipe()
    os.set_blocking(write, False)

    def deliver() -> None:
        while data := os.read(read, 1):
            said(data[0])
            event.set()
        os.close(read)

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):  # the pipe full: a signal is on its way already
            os.write(write, bytes([signum]))

    thread = threading.Thread(target=deliver, name="signals", daemon=True)
    thread.start()
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
        os.close(write)  # the thread reads the end, and ends
        thread.join()
