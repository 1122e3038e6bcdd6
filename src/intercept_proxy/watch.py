"""Polling file watcher: robust for ConfigMap/downwardAPI volumes (atomic symlink swaps), editors
that replace files, and files that appear later; no inotify dependency."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int] | None, ...]


def signature(paths: Sequence[Path]) -> Signature:
    """What changes when any of `paths` is written, replaced, created or removed."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()  # follows symlinks: a swapped ..data link changes the inode
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


async def watch(
    paths: Callable[[], Sequence[Path]],
    on_change: Callable[[], object],
    interval_s: float = 0.2,
) -> None:
    """Call `on_change` whenever the files `paths()` names change; runs until cancelled."""
    seen = signature(paths())
    while True:
        await asyncio.sleep(interval_s)
        current = signature(paths())
        if current != seen:
            seen = current
            try:
                on_change()
            except Exception:  # a failing reaction must not end the watching
                log.exception("reacting to a change of %s failed", [str(p) for p in paths()])
