"""A stop signal reaches the event the main thread waits on (signals.py), its handler taking no
lock: sent over and over while the main thread is inside `event.wait()`, it is delivered."""

from __future__ import annotations

import os
import signal
import threading

from intercept_proxy import signals


def test_a_signal_sets_the_event_the_main_thread_waits_on_and_the_handler_comes_back():
    event = threading.Event()
    said: list[int] = []
    before = signal.getsignal(signal.SIGUSR1)
    stop_sending = threading.Event()

    def send() -> None:  # many signals, many of them inside event.wait()'s locked section
        while not stop_sending.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            stop_sending.wait(0.0005)

    with signals.setting(event, [signal.SIGUSR1], said.append):
        sender = threading.Thread(target=send)
        sender.start()
        try:
            rounds = 0
            while not event.wait(0.0001):
                rounds += 1
                assert rounds < 1_000_000, "never delivered"
            for _ in range(2000):  # the handler runs inside wait() and never blocks it
                event.clear()
                event.wait(0.0001)
        finally:
            stop_sending.set()
            sender.join()
    assert said and set(said) == {signal.SIGUSR1}
    assert signal.getsignal(signal.SIGUSR1) is before
