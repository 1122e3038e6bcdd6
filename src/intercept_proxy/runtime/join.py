"""Run a command inside a running container, as `kubectl exec` does (and exec probes): the
container's namespaces, its root filesystem, its identity, its seccomp filter, its environment.

Nothing of the container is trusted while this process is root: the namespaces are joined by
file descriptor, and no program is looked up, and no environment variable of the container is
read, until the process has become the container's identity (privileges.py). (An `nsenter` and
a `setpriv` found through the container's PATH, as root, would be the container's to choose.)

Usage: python -I -m intercept_proxy.runtime.join SPEC_FD
SPEC: {"pid": the container's init, "identity": {...} (as enter.py), "seccomp": bool,
       "working_dir": str | null, "env": {...}, "argv": [...]}
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from intercept_proxy.runtime import enter, privileges, seccomp

# Joined in this order: the mount namespace last (it changes what /proc/PID names).
NAMESPACES = ("ipc", "uts", "net", "pid", "mnt")

_libc = ctypes.CDLL(None, use_errno=True)


def join(pid: int) -> None:
    fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in NAMESPACES]
    try:
        for ns, fd in zip(NAMESPACES, fds, strict=True):
            if _libc.setns(fd, 0) != 0:
                raise OSError(ctypes.get_errno(), f"setns({ns}): {os.strerror(ctypes.get_errno())}")
    finally:
        for fd in fds:
            os.close(fd)
    os.chdir("/")  # the container's root (joining its mount namespace made it ours)


def run(spec: dict[str, Any]) -> int:
    join(spec["pid"])
    child = os.fork()  # the PID namespace applies to children
    if child == 0:
        try:
            privileges.new_session_keyring()
            if spec["seccomp"]:
                seccomp.install()
            who = enter.identity(spec)
            privileges.become(who)
            privileges.verify(who, seccomp=spec["seccomp"])
            if spec.get("working_dir"):
                os.chdir(spec["working_dir"])
            os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
        except (OSError, privileges.PrivilegeError) as e:
            print(f"intercept runtime: cannot run {spec['argv'][0]!r}: {e}", file=sys.stderr)
        os._exit(enter.CANNOT_START)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(run(enter.read_spec(int(sys.argv[1]))))
