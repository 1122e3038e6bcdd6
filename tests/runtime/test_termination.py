"""A pod stopping as the kubelet stops one: every app container's preStop hook runs first (exec
as the container, or sleep), then SIGTERM, then SIGKILL when the pod's
terminationGracePeriodSeconds is over; the hooks and the containers share that period."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.workdirs import operator_workdir

pytestmark = pytest.mark.netns

GRACE_S = 4
POD = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: stopping}}
spec:
  terminationGracePeriodSeconds: {GRACE_S}
  securityContext: {{runAsUser: 12345, runAsGroup: 12345}}
  volumes: [{{name: w, emptyDir: {{}}}}]
  containers:
    - name: app
      image: busybox:1.36
      volumeMounts: [{{name: w, mountPath: /w}}]
      command: [sh, -c, 'trap "cat /w/hook; echo app: SIGTERM; exit 0" TERM; echo app: up;
                while :; do sleep 0.1; done']
      lifecycle:
        preStop:
          exec: {{command: [sh, -c, 'echo "hook: as $(id -u)" > /w/hook; sleep 1']}}
    - name: stubborn
      image: busybox:1.36
      command: [sh, -c, 'trap "echo stubborn: ignores SIGTERM" TERM; echo stubborn: up;
                while :; do sleep 0.1; done']
      lifecycle:
        preStop: {{sleep: {{seconds: 1}}}}
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    with operator_workdir("intercept-termination-", {"pod.yaml": POD}) as path:
        yield path


def test_pre_stop_hooks_then_sigterm_then_sigkill_at_the_grace_periods_end(workdir):
    process = subprocess.Popen(
        [sys.executable, "-m", "intercept_proxy", "run", "--pod", "pod.yaml"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []  # the containers' lines, as `[name] line` (a pod of several)
    seen: dict[str, float] = {}  # when each line came

    def read() -> None:
        for line in process.stderr or ():
            seen.setdefault(line.strip(), time.monotonic())
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not {"[app] app: up\n", "[stubborn] stubborn: up\n"} <= set(lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.1)
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    took = time.monotonic() - stopped
    reader.join(10)
    app = [line.strip() for line in lines if line.startswith("[app] ")]
    # The hook ran in the app container, as its user, before its SIGTERM.
    assert app[-2:] == ["[app] hook: as 12345", "[app] app: SIGTERM"], "".join(lines)[-3000:]
    # Both hooks (1 s each, exec and sleep) ran at once: each SIGTERM came 1 s after the stop,
    # not 2 s (one after the other) nor at once (a hook skipped).
    for line in ("[app] app: SIGTERM", "[stubborn] stubborn: ignores SIGTERM"):
        assert 0.9 <= seen[line] - stopped < 1.8, (line, seen[line] - stopped)
    # The container that ignores SIGTERM lived until the grace period's end, not longer.
    assert GRACE_S <= took < GRACE_S + 3, took
