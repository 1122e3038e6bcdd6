"""The first step of every local container, run as root inside the pod's network namespace, a
fresh private mount namespace and a fresh PID namespace
(`unshare --mount --propagation private --pid --fork --mount-proc`): bind the container's volumes
at their mount paths, make the root filesystem read-only if asked, then start the container's
process through `setpriv` with exactly the identity it was given.

Every container also gets its own IPC and UTS namespaces, a private /dev/shm and a sysfs of
its network namespace; a container whose seccomp profile is RuntimeDefault gets the runtime's
filter (`seccomp.py`).

This process stays on as the namespace's init (PID 1), like `docker run --init`: it forwards
signals to the container's process (a PID 1 without handlers would ignore them: Ctrl-C would
not stop `sleep`), reaps orphans, and exits with the container's status. The container sees
only its own processes, never the machine's.

Usage: python -m intercept_proxy.runtime.enter SPEC_JSON
SPEC: {"mounts": [{"source", "target", "read_only"}], "read_only_root": bool, "seccomp": bool,
       "terminal": bool (stdin is a pseudo-terminal to take as the controlling one),
       "working_dir": str | null, "env": {...}, "argv": [...] (setpriv ... -- command)}
Mounts die with the mount namespace, so a container leaves none behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
from typing import Any

from intercept_proxy.runtime import seccomp

# Not SIGINT: a terminal's Ctrl-C reaches the container's process directly (same process group);
# forwarding it too would deliver it twice.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"intercept runtime: mount {' '.join(args)}: {result.stderr.strip()}")


def prepare(spec: dict[str, Any]) -> None:
    _mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", "/dev/shm")
    _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", "/sys")
    for mount in spec["mounts"]:
        _mount("--bind", mount["source"], mount["target"])
        if mount.get("read_only"):
            _mount("-o", "remount,bind,ro", mount["target"])
    # After the binds: a volume bound from a read-only filesystem would be read-only too.
    if spec.get("read_only_root"):
        _mount("-o", "remount,bind,ro", "/")


def supervise(spec: dict[str, Any]) -> int:
    """Start the container's process and wait for it as its namespace's init."""
    argv = spec["argv"]
    if spec.get("terminal"):  # stdin is the container's own pseudo-terminal: make it ours
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    child = os.fork()
    if child == 0:
        for sig in (*FORWARDED, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if spec.get("working_dir"):
            os.chdir(spec["working_dir"])
        if spec.get("seccomp"):
            seccomp.install()
        os.execvpe(argv[0], argv, spec["env"])
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # the child got it already
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return (
                os.waitstatus_to_exitcode(status)
                if os.WIFEXITED(status)
                else (128 + os.WTERMSIG(status))
            )


if __name__ == "__main__":
    specification = json.loads(sys.argv[1])
    prepare(specification)
    sys.exit(supervise(specification))
