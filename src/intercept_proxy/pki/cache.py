"""A bounded cache of minted leaves: bounded in entries (LRU) and in age.

Any name a workload sends as SNI gets a certificate, so the number of names is chosen by the
workload: the cache must never grow with it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from intercept_proxy.pki.ca import CertificateAuthority, Leaf


@dataclass
class _Entry:
    leaf: Leaf
    renew_at: float


class LeafCache:
    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        max_entries: int = 1024,
        validity: dt.timedelta = dt.timedelta(hours=12),
        clock: Callable[[], float] = time.monotonic,
        on_mint: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ca = ca
        self.max_entries = max_entries
        self.validity = validity
        # Renew at half-life, so a leaf handed out from the cache always has half its validity left.
        self.max_age = validity.total_seconds() / 2
        self._clock = clock
        self._on_mint = on_mint
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.minted = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.renew_at > self._clock()

    def get(self, name: str) -> Leaf:
        """The cached leaf for `name` (a normalised host name), minted when absent or too old."""
        now = self._clock()
        entry = self._entries.get(name)
        if entry is not None and entry.renew_at > now:
            self._entries.move_to_end(name)
            return entry.leaf
        started = time.perf_counter()
        leaf = self.ca.issue([name], validity=self.validity)
        self._on_mint(time.perf_counter() - started)
        self.minted += 1
        self._entries[name] = _Entry(leaf, now + self.max_age)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1
        return leaf
