"""A sandbox for tests: `intercept run`'s pod (the injector, the local runtime, a lab uplink),
kept running with a workload that waits, so tests can `exec` into it like `kubectl exec`."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from intercept_proxy import netns
from intercept_proxy.injector.pod import inject_pod
from intercept_proxy.injector.settings import InjectorSettings
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.runtime.cli import WORKLOAD, _executables, command_pod, policy_config_map
from intercept_proxy.runtime.network import LabUplink
from intercept_proxy.runtime.pod import LocalPod, Options

WORKLOAD_UID = 12345

LAB_SPEC = {
    "hosts": [
        {"name": "pypi.org"},
        {"name": "files.pythonhosted.org"},
        {"name": "api.github.com"},
        {"name": "github.com", "git_repos": ["octo/hello", "octo/other"]},
        {"name": "api.anthropic.com"},
        {"name": "unknown.example"},
    ]
}

POLICY = """\
allowed_domains: [pypi.org, "*.pythonhosted.org"]
unrestricted_domains: [api.anthropic.com]
github_read_access_enabled: true
github_allowed_repos: [octo/hello]
"""


class Sandbox:
    def __init__(self, lab: Lab, policy: str = POLICY) -> None:
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix="intercept-sandbox-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.policy_path = self.dir / "policy.yaml"
        self.policy_path.write_text(policy)
        self.decision_log = self.dir / "decisions.log"
        self.prefix = netns.unique_prefix("isx")
        settings = InjectorSettings()
        pod = inject_pod(command_pod(["sleep", "infinity"], WORKLOAD_UID, self.prefix), settings)
        self.pod_spec = pod
        config_map = policy_config_map(self.policy_path, settings.policy_config_map)
        options = Options(
            uplink=LabUplink(lab),
            executables=_executables(),
            prefix=self.prefix,
            # As `intercept run` gives, but /tmp only: the tests' working directory is the repo.
            writable={WORKLOAD: (Path("/tmp"),)},
            decision_log=self.decision_log,
        )
        self.pod = LocalPod(pod, {("ConfigMap", settings.policy_config_map): config_map}, options)
        self.status: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.status = self.pod.run()
        except BaseException as e:  # surfaced by start()
            self.error = e

    def start(self, timeout: float = 90.0) -> Sandbox:
        self._thread.start()
        for _ in range(int(timeout * 10)):
            if self.pod.started.wait(0.1):
                return self
            if self.error is not None or not self._thread.is_alive():
                break
        self.close()
        lines = "".join(line for lines in self.pod.recent.values() for line in lines)
        raise RuntimeError(f"sandbox did not start: {self.error!r}\n{lines}")

    def close(self) -> None:
        self.pod.stop()
        self._thread.join(60)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def netns(self) -> str:
        return self.pod.name

    def exec(self, argv: list[str], timeout: float = 60.0) -> Any:
        return self.pod.exec(WORKLOAD, argv, timeout)

    def sh(self, script: str, timeout: float = 60.0) -> Any:
        return self.exec(["sh", "-c", script], timeout)

    def decisions(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.decision_log.read_text().splitlines() if line]

    def received(self, host: str) -> list[dict[str, Any]]:
        return [r for r in self.lab.receipts() if r["host"] == host]


def start_lab(prefix: str) -> Lab:
    return Lab(LabSpec.from_dict(LAB_SPEC, source="<sandbox tests>"), prefix=prefix).start()
