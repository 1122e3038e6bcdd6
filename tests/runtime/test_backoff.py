"""The restart back-off of a sidecar that exits: doubling, capped, reset by a long run."""

from __future__ import annotations

from intercept_proxy.runtime.pod import BACKOFF_MAX_S, BACKOFF_RESET_S, backoff


def test_quick_exits_double_the_delay_up_to_the_cap():
    restarts, delays = 0, []
    for _ in range(8):
        restarts, delay = backoff(restarts, ran_for=0.1)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, BACKOFF_MAX_S, BACKOFF_MAX_S, BACKOFF_MAX_S]
    assert restarts == 8


def test_a_long_run_starts_the_count_again():
    assert backoff(7, ran_for=BACKOFF_RESET_S) == (1, 0.5)
    assert backoff(7, ran_for=BACKOFF_RESET_S - 1) == (8, BACKOFF_MAX_S)
