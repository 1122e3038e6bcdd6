"""Pods for tests: the injector, the local runtime, a lab uplink; kept running in a thread so
tests can `exec` into them like `kubectl exec`.

`RunningPod` runs any (injected) Pod; `Sandbox` runs `intercept run`'s own pod for a workload
that waits."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from intercept_proxy import netns
from intercept_proxy.injector.pod import ENVOY, SIDECARS
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.lab.addresses import LAB_RANGES
from intercept_proxy.runtime.cli import WORKLOAD, _executables, run_settings, sandbox_pod
from intercept_proxy.runtime.network import LabUplink
from intercept_proxy.runtime.pod import LocalPod, Options
from tests.decisions import Record, decisions

WORKLOAD_UID = 12345

LAB_SPEC = {
    "hosts": [
        {"name": "pypi.org"},
        {"name": "files.pythonhosted.org"},
        {"name": "api.github.com"},
        {"name": "github.com", "git_repos": ["octo/hello", "octo/other"]},
        {"name": "api.anthropic.com"},
        {"name": "example.com"},
        {"name": "unknown.example"},
    ]
}

POLICY = """\
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""


TESTS = Path(__file__).resolve().parents[1]


class RunningPod:
    def __init__(
        self,
        lab: Lab,
        pod: dict[str, Any],
        objects: Mapping[tuple[str, str], dict[str, Any]],
        read_only: Mapping[str, tuple[Path, ...]] | None = None,
    ) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="intercept-testpod-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.decision_log = self.dir / "decisions.log"
        self.prefix = netns.unique_prefix("isx")
        self.spec = pod
        options = Options(
            uplink=LabUplink(lab),
            executables=_executables(),
            prefix=self.prefix,
            read_only=dict(read_only or {}),
            trusted=frozenset(SIDECARS),
            stdout_files={ENVOY: self.decision_log},
        )
        self.pod = LocalPod(pod, objects, options)
        self.status: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.status = self.pod.run()
        except BaseException as e:  # surfaced by start()
            self.error = e

    def start(self, timeout: float = 90.0) -> RunningPod:
        self._thread.start()
        for _ in range(int(timeout * 10)):
            if self.pod.started.wait(0.1):
                return self
            if self.error is not None or not self._thread.is_alive():
                break
        self.close()
        raise RuntimeError(f"pod did not start: {self.error!r}\n{self.output()}")

    def wait(self, timeout: float = 120.0) -> int | None:
        """Until the pod ends by itself (a Job); its status."""
        self._thread.join(timeout)
        return self.status

    def close(self) -> None:
        self.pod.stop()
        self._thread.join(60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def output(self, container: str | None = None) -> str:
        names = [container] if container else list(self.pod.recent)
        return "".join(line for name in names for line in self.pod.recent.get(name, ()))

    @property
    def netns(self) -> str:
        return self.pod.name

    def exec(self, container: str, argv: list[str], timeout: float = 60.0) -> Any:
        return self.pod.exec(container, argv, timeout)

    def decisions(
        self, match: Callable[[Record], bool] | None = None, count: int = 1
    ) -> list[Record]:
        return decisions(self.decision_log, match, count)

    def received(self, host: str) -> list[dict[str, Any]]:
        return [r for r in self.lab.receipts() if r["host"] == host]


class Sandbox(RunningPod):
    """`intercept run`'s pod, with a workload that waits for `exec`."""

    def __init__(
        self, lab: Lab, policy: str = POLICY, environ: Mapping[str, str] = os.environ
    ) -> None:
        """`environ`: the operator's environment (the credentials' secrets come from it)."""
        policy_dir = Path(tempfile.mkdtemp(prefix="intercept-policy-", dir="/tmp"))
        (policy_dir / "policy.yaml").write_text(policy)
        settings = run_settings(LAB_RANGES)
        try:
            pod, objects = sandbox_pod(
                ["sleep", "infinity"], WORKLOAD_UID, policy_dir / "policy.yaml", settings, environ
            )
        finally:
            shutil.rmtree(policy_dir)
        # In place of `intercept run`'s working directory, the tests' own scripts (probes),
        # read-only: a clone under /tmp is not in the image.
        super().__init__(
            lab,
            pod,
            {(o["kind"], o["metadata"]["name"]): o for o in objects},
            read_only={WORKLOAD: (TESTS,)},
        )

    def exec(self, argv: list[str], timeout: float = 60.0) -> Any:  # type: ignore[override]
        return super().exec(WORKLOAD, argv, timeout)

    def sh(self, script: str, timeout: float = 60.0) -> Any:
        return self.exec(["sh", "-c", script], timeout)


@contextlib.contextmanager
def sandbox_in_own_lab(
    spec: dict[str, Any], prefix: str, policy: str, environ: Mapping[str, str] = os.environ
) -> Iterator[Sandbox]:
    """A Sandbox with `policy` in a lab of `spec` of its own; both removed at the end."""
    lab = Lab(LabSpec.from_dict(spec, source=f"<{prefix}>"), prefix=prefix).start()
    try:
        sandbox = Sandbox(lab, policy, environ).start()
        try:
            yield sandbox
        finally:
            sandbox.close()
    finally:
        lab.stop()


def start_lab(prefix: str) -> Lab:
    return Lab(LabSpec.from_dict(LAB_SPEC, source="<sandbox tests>"), prefix=prefix).start()
