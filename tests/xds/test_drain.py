"""`intercept envoy drain`, the gateway agent's preStop hook, where no Envoy is needed: a hook
run alone (the agent restarting, the pod not stopping) drains nothing and marks nothing; an
Envoy that has gone counts as drained. (A real Envoy drained mid-stream: tests/cluster/
test_gateway_ca.py.)"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from intercept_proxy.xds.cli import WHEN_WAIT_S
from intercept_proxy.xds.envoy import client_connections


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    argv = [sys.executable, "-m", "intercept_proxy", "envoy", "drain", "--grace", "30"]
    argv += ["--admin-port", str(closed_port()), "--done", str(tmp_path / "drained"), *args]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return done, time.monotonic() - start


def test_a_hook_run_alone_drains_nothing(tmp_path):
    done, took = drain(tmp_path, "--when", str(tmp_path / "stopping"))
    assert done.returncode == 0, done.stderr
    assert WHEN_WAIT_S <= took < WHEN_WAIT_S + 5
    assert not (tmp_path / "drained").exists()


def test_an_envoy_that_has_gone_is_drained(tmp_path):
    (tmp_path / "stopping").touch()
    done, _ = drain(tmp_path, "--when", str(tmp_path / "stopping"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "drained").read_text() == "drained\n"


def test_only_the_connections_of_listeners_clients_reach_count():
    stats = [
        {"name": "listener.0.0.0.0_3128.downstream_cx_active", "value": 2},
        {"name": "listener.[__]_3128.downstream_cx_active", "value": 1},
        # Again per worker: counted above already.
        {"name": "listener.0.0.0.0_3128.worker_0.downstream_cx_active", "value": 2},
        {"name": "listener.admin.downstream_cx_active", "value": 1},
        {"name": "listener.admin.main_thread.downstream_cx_active", "value": 1},
        # Envoy's pooled connections to the gateway's own internal listeners.
        {"name": "listener.envoy_internal_intercept_http_proxied.downstream_cx_active", "value": 3},
        {"name": "http.intercept_http.downstream_cx_active", "value": 3},
    ]
    assert client_connections(stats) == 3
