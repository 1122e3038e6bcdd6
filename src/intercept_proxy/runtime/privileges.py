"""Becoming a container's identity, then proving it: the last step before its program runs.

`become` sets the groups, the user and the capabilities (bounding, permitted, effective,
inheritable and, for a non-root user, ambient) with system calls, without a helper program whose
options could be misread (setpriv takes a UID of (uid_t)-1 for "leave it as it is").
`verify` then reads what the kernel says of the process (/proc/self/status) and refuses to
continue unless every ID and capability set is exactly the one asked for.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from intercept_proxy import procfs

# Capability numbers (linux/capability.h) of the names a Pod spec may use.
CAPABILITIES = {
    name: number
    for number, name in enumerate(
        (
            "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
            "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
            "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
            "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
            "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
            "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
            "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
        )
    )
}  # fmt: skip

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}


class PrivilegeError(RuntimeError):
    """The process is not, or could not become, the identity it was given."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    capabilities: tuple[str, ...]
    no_new_privileges: bool

    @property
    def capability_mask(self) -> int:
        return sum(1 << CAPABILITIES[c] for c in self.capabilities)


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(errno)}")


def _prctl(option: int, arg: int = 0, arg3: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0), what)


def _last_capability() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def _capset(mask: int) -> None:
    header = _Header(_CAPABILITY_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = (_Data * 2)(_Data(low, low, low), _Data(high, high, high))
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def new_session_keyring() -> None:
    """An anonymous session keyring of its own: nothing of another container's (or of this
    machine's login sessions) is in reach through the session keyring."""
    number = _SYS_KEYCTL.get(os.uname().machine)
    if number is None:
        raise PrivilegeError(f"no keyctl system call number for {os.uname().machine}")
    if _libc.syscall(number, _KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        raise PrivilegeError(f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(ctypes.get_errno())}")


def become(who: Identity) -> None:
    """Turn the calling process (root, with every capability) into `who`, irreversibly."""
    mask = who.capability_mask
    for number in range(_last_capability() + 1):
        if not mask & (1 << number):
            _prctl(_PR_CAPBSET_DROP, number, what=f"dropping capability {number}")
    if who.no_new_privileges:
        _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="no_new_privs")
    os.setgroups(list(who.groups))
    keep = who.uid != 0 and mask != 0
    if keep:  # a non-root user keeps its permitted capabilities across setresuid
        _prctl(_PR_SET_KEEPCAPS, 1, what="keepcaps")
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    _capset(mask)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="clearing ambient capabilities")
    if keep:
        # Ambient: what a non-root program keeps across exec (no file capabilities needed).
        for name in who.capabilities:
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, CAPABILITIES[name], what=name)
        _prctl(_PR_SET_KEEPCAPS, 0, what="keepcaps")


def verify(who: Identity, seccomp: bool) -> None:
    """What the kernel says of this process is exactly `who` (and its seccomp filter)."""
    status = procfs.status()
    mask = who.capability_mask
    expected = {
        "Uid": " ".join([str(who.uid)] * 4),
        "Gid": " ".join([str(who.gid)] * 4),
        "Groups": " ".join(map(str, sorted(who.groups))),
        "CapInh": f"{mask:016x}",
        "CapPrm": f"{mask:016x}",
        "CapEff": f"{mask:016x}",
        "CapBnd": f"{mask:016x}",
        "CapAmb": f"{mask if who.uid != 0 else 0:016x}",
    }
    actual = {k: " ".join(status.get(k, "").split()) for k in expected}
    if who.no_new_privileges:
        expected["NoNewPrivs"], actual["NoNewPrivs"] = "1", status.get("NoNewPrivs", "")
    if seccomp:
        expected["Seccomp"], actual["Seccomp"] = "2", status.get("Seccomp", "")
    wrong = {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}
    if wrong:
        detail = ", ".join(f"{k} is {a!r}, not {e!r}" for k, (a, e) in sorted(wrong.items()))
        raise PrivilegeError(f"the process is not the identity it was given: {detail}")
