"""The first step of every local container, run as root inside the pod's network namespace, a
fresh private mount namespace and a fresh PID namespace (`unshare --mount --propagation private
--pid --fork`, plus IPC and UTS): build the container's root filesystem (`rootfs.py`) and make it
the root, then start the container's program with exactly the identity it was given
(`privileges.py`), under the runtime's seccomp filter (`seccomp.py`) and a session keyring of
its own.

This process stays on as the namespace's init (PID 1), like `docker run --init`: it forwards
signals to the container's process (a PID 1 without handlers would ignore them: Ctrl-C would
not stop `sleep`), reaps orphans, and exits with the container's status. The container sees
only its own processes, never the machine's.

Usage: python -I -m intercept_proxy.runtime.enter SPEC_FD
SPEC_FD: an inherited descriptor (a memfd) holding the JSON specification, read and closed at
once: a container's specification (its environment included) never appears on a command line.
SPEC: {"scratch": str, "binds": [{"source", "target", "read_only"}], "read_only_root": bool,
       "excluded": [str], "seccomp": bool, "terminal": bool (stdin is a pseudo-terminal to take
       as the controlling one), "working_dir": str | null, "env": {...}, "argv": [...],
       "identity": {"uid", "gid", "groups", "capabilities", "no_new_privileges"}}
Mounts die with the mount namespace, so a container leaves none behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import termios
from pathlib import Path
from typing import Any

from intercept_proxy.runtime import privileges, rootfs, seccomp

# Not SIGINT: a terminal's Ctrl-C reaches the container's process directly (same process group);
# forwarding it too would deliver it twice.
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# What the container's program exits with when it could not be started as specified.
CANNOT_START = 126


def read_spec(fd: int) -> dict[str, Any]:
    with os.fdopen(fd, "rb") as spec:
        spec.seek(0)
        loaded: dict[str, Any] = json.loads(spec.read())
        return loaded


def identity(spec: dict[str, Any]) -> privileges.Identity:
    who = spec["identity"]
    return privileges.Identity(
        uid=who["uid"],
        gid=who["gid"],
        groups=tuple(who["groups"]),
        capabilities=tuple(who["capabilities"]),
        no_new_privileges=who["no_new_privileges"],
    )


def prepare(spec: dict[str, Any]) -> None:
    binds = [rootfs.Bind(b["source"], b["target"], bool(b.get("read_only"))) for b in spec["binds"]]
    rootfs.prepare(Path(spec["scratch"]), binds, spec["read_only_root"], spec.get("excluded", ()))


def _start(spec: dict[str, Any]) -> None:
    """In the forked child: become the container's process (never returns)."""
    try:
        for sig in (*FORWARDED, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        privileges.new_session_keyring()
        if spec["seccomp"]:
            seccomp.install()
        who = identity(spec)
        privileges.become(who)
        privileges.verify(who, seccomp=spec["seccomp"])
        # As the container's user: a directory it may not enter (under a 0700 home) stays so.
        if spec.get("working_dir"):
            os.chdir(spec["working_dir"])
        argv = spec["argv"]
        os.execvpe(argv[0], argv, spec["env"])
    except (OSError, privileges.PrivilegeError) as e:
        print(f"intercept runtime: cannot start {spec['argv'][0]!r}: {e}", file=sys.stderr)
    os._exit(CANNOT_START)


def supervise(spec: dict[str, Any]) -> int:
    """Start the container's process and wait for it as its namespace's init."""
    if spec.get("terminal"):  # stdin is the container's own pseudo-terminal: make it ours
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    child = os.fork()
    if child == 0:
        _start(spec)
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
    specification = read_spec(int(sys.argv[1]))
    try:
        prepare(specification)
    except OSError as error:
        sys.exit(f"intercept runtime: {error}")
    sys.exit(supervise(specification))
