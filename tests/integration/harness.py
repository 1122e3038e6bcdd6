"""The lab's interceptor (intercept_proxy.lab.interceptor) in a test namespace, and curl (as an
unprivileged workload UID) aimed at Envoy's listeners with explicit addressing (transparent
redirection is the sandbox's job)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from intercept_proxy import netns, ports
from intercept_proxy.lab import interceptor as lab_interceptor
from intercept_proxy.runtime.containers import as_user
from tests.decisions import Record, decisions

T = TypeVar("T")

WORKLOAD_UID = 12345


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


class Interceptor(lab_interceptor.Interceptor):
    """The lab's interceptor, and what the tests do with it."""

    def __init__(
        self, ns: str, policy: str, upstream_ca: Path, dns: tuple[str, ...], **agent: Any
    ) -> None:
        """`agent`: more of the agent's settings."""
        super().__init__(
            ns,
            policy,
            upstream_ca,
            dns,
            log_level=os.environ.get("AGENT_LOG_LEVEL", "info"),
            envoy_args=("-l", "warning"),
            cert_cache_size=200,
            **agent,
        )

    @contextlib.contextmanager
    def upstream_ca_replaced(self, pem: bytes) -> Iterator[None]:
        """The upstream CA bundle replaced by `pem`, the original back afterwards."""
        good = self.upstream_ca.read_bytes()
        self.set_upstream_ca(pem)
        try:
            yield
        finally:
            self.set_upstream_ca(good)

    def until(self, condition: Callable[[], T], timeout: float = 10) -> T:
        """`condition()` once it is true; failing with the logs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        return value

    def decisions(
        self, match: Callable[[Record], bool] | None = None, count: int = 1
    ) -> list[Record]:
        return decisions(self.decision_log, match, count)

    # -- the workload's side -------------------------------------------------------------------

    def curl(self, method: str, url: str, *args: str, timeout: float = 30.0) -> Response:
        """curl as the workload, every host:port sent to Envoy's TLS or plain listener."""
        port = ports.ENVOY_TLS if url.startswith("https:") else ports.ENVOY_HTTP
        argv = [
            "curl", "-sS", "-X", method, "--cacert", str(self.ca_cert),
            "--connect-to", f"::127.0.0.1:{port}",
            "--write-out", "%{stderr}\n@status %{http_code}\n@headers %{header_json}\n",
            "--max-time", str(timeout),
            *args, url,
        ]  # fmt: skip
        result = subprocess.run(
            netns.exec_argv(self.ns, as_user(WORKLOAD_UID, argv)),
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
        stderr = result.stderr.decode(errors="replace")
        # The write-out comes last: "@status N", then "@headers" and curl's JSON of the headers.
        head, _, header_json = stderr.rpartition("\n@headers ")
        status_text = head.rpartition("@status ")[2]
        status = int(status_text) if status_text.isdigit() else 0
        raw = json.loads(header_json) if header_json.strip() else {}
        headers = {k.lower(): v[-1] for k, v in raw.items()}
        return Response(status, headers, result.stdout, stderr)
