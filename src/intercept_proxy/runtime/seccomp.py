"""The local runtime's seccomp filter for workload containers: what a container runtime's default
profile does about the ways out that iptables cannot see.

- sockets of any family but unix, IPv4, IPv6 and netlink fail (EAFNOSUPPORT): no AF_VSOCK to the
  hypervisor, no AF_PACKET, Bluetooth, CAN or anything else that bypasses the IP rules;
- TIOCSTI and TIOCLINUX fail (EPERM): no typing into a terminal;
- new user namespaces fail (EPERM), and clone3 (whose flags a filter cannot read) reports ENOSYS
  so that the C library falls back to clone;
- io_uring fails (EPERM): its operations create sockets and open files without the system calls
  this filter checks (an AF_VSOCK socket through IORING_OP_SOCKET);
- the kernel keyrings fail (EPERM): add_key, request_key and keyctl reach keys shared by every
  process of the same UID on this machine, other sandboxes included;
- bpf, perf_event_open and userfaultfd fail (EPERM), as in container runtimes' default profiles;
- setting the setuid or setgid bit fails (EPERM: chmod, fchmod, fchmodat, fchmodat2, open,
  openat, creat, mknod, mknodat with such a mode; openat2, whose mode a filter cannot read,
  reports ENOSYS so that the C library falls back to openat): a file the workload leaves in its
  working directory never lends its user to whoever runs it later;
- system calls of another ABI (i386 or x32 on x86-64) fail (ENOSYS): they would dodge the checks.

`program()` is a pure function (classic BPF as bytes); `install()` loads it into the calling
process, from which every process it executes inherits it.
"""

from __future__ import annotations

import ctypes
import platform
import struct
from dataclasses import dataclass

_LD_W_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06

_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97

_OFFSET_NR, _OFFSET_ARCH = 0, 4


def _arg(n: int) -> int:
    return 16 + 8 * n  # the low 32 bits of argument n (little-endian)


ALLOWED_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
CLONE_NEWUSER = 0x10000000
X32_BIT = 0x40000000
SET_ID_BITS = 0o6000  # S_ISUID | S_ISGID
_IO_URING = (425, 426, 427)


@dataclass(frozen=True)
class Abi:
    arch: int
    socket: int
    socketpair: int
    ioctl: int
    unshare: int
    clone: int
    # Refused outright (EPERM): keyrings (add_key, request_key, keyctl), bpf, perf_event_open,
    # userfaultfd, then io_uring (setup, enter, register; the same numbers on every ABI).
    refused: tuple[int, ...]
    # (system call, index of its mode argument): refused with a setuid or setgid bit.
    modes: tuple[tuple[int, int], ...]
    clone3: int = 435
    openat2: int = 437


ABIS = {
    "x86_64": Abi(
        arch=0xC000003E,
        socket=41,
        socketpair=53,
        ioctl=16,
        unshare=272,
        clone=56,
        refused=(248, 249, 250, 321, 298, 323, *_IO_URING),
        # chmod, fchmod, fchmodat, fchmodat2, open, openat, creat, mknod, mknodat
        modes=((90, 1), (91, 1), (268, 2), (452, 2), (2, 2), (257, 3), (85, 1), (133, 1), (259, 2)),
    ),
    "aarch64": Abi(
        arch=0xC00000B7,
        socket=198,
        socketpair=199,
        ioctl=29,
        unshare=97,
        clone=220,
        refused=(217, 218, 219, 280, 241, 282, *_IO_URING),
        # fchmod, fchmodat, fchmodat2, openat, mknodat
        modes=((52, 1), (53, 2), (452, 2), (56, 3), (33, 2)),
    ),
}


# An instruction (op, k) or (op, k, then, else) with jumps to labels, or ("label", name).
Instruction = tuple[int | str, ...]


def _assemble(code: list[Instruction]) -> bytes:
    """Instructions with labels: (op, k, then, else) jumps name labels, ("label", name) marks."""
    labels: dict[int | str, int] = {}
    position = 0
    for item in code:
        if item[0] == "label":
            labels[item[1]] = position
        else:
            position += 1
    out, position = b"", 0
    for item in code:
        if item[0] == "label":
            continue
        op, k, *targets = item
        jt, jf = (labels[t] - position - 1 if t else 0 for t in (targets or ("", "")))
        if not (0 <= jt < 256 and 0 <= jf < 256):  # a classic BPF jump is one byte forward
            raise ValueError(f"a jump too far at instruction {position}")
        out += struct.pack("=HBBI", op, jt, jf, k)
        position += 1
    return out


def program(abi: Abi) -> bytes:

    def errno(e: int) -> int:
        return _ERRNO | e

    code: list[Instruction] = [
        (_LD_W_ABS, _OFFSET_ARCH),
        (_JEQ, abi.arch, "native", "foreign"),
        ("label", "native"),
        (_LD_W_ABS, _OFFSET_NR),
        (_JGE, X32_BIT, "foreign", "checks"),
        ("label", "checks"),
        (_JEQ, abi.socket, "family", "not_socket"),
        ("label", "not_socket"),
        (_JEQ, abi.socketpair, "family", "not_socketpair"),
        ("label", "not_socketpair"),
        (_JEQ, abi.ioctl, "ioctl", "not_ioctl"),
        ("label", "not_ioctl"),
        (_JEQ, abi.unshare, "namespaces", "not_unshare"),
        ("label", "not_unshare"),
        (_JEQ, abi.clone, "namespaces", "not_clone"),
        ("label", "not_clone"),
    ]
    for i, number in enumerate(abi.refused):
        code += [(_JEQ, number, "eperm", f"not_refused{i}"), ("label", f"not_refused{i}")]
    for i, (number, _) in enumerate(abi.modes):
        code += [(_JEQ, number, f"mode{i}", f"not_mode{i}"), ("label", f"not_mode{i}")]
    code += [
        (_JEQ, abi.openat2, "enosys", "not_openat2"),
        ("label", "not_openat2"),
        (_JEQ, abi.clone3, "enosys", "allow"),
        ("label", "family"),
        (_LD_W_ABS, _arg(0)),
    ]
    for i, family in enumerate(ALLOWED_FAMILIES):
        code += [(_JEQ, family, "allow", f"family{i}"), ("label", f"family{i}")]
    code += [
        (_RET, errno(EAFNOSUPPORT)),
        ("label", "ioctl"),
        (_LD_W_ABS, _arg(1)),
        (_JEQ, TIOCSTI, "eperm", "not_tiocsti"),
        ("label", "not_tiocsti"),
        (_JEQ, TIOCLINUX, "eperm", "allow"),
        ("label", "namespaces"),
        (_LD_W_ABS, _arg(0)),
        (_JSET, CLONE_NEWUSER, "eperm", "allow"),
    ]
    for i, (_, index) in enumerate(abi.modes):
        code += [
            ("label", f"mode{i}"),
            (_LD_W_ABS, _arg(index)),
            (_JSET, SET_ID_BITS, "eperm", "allow"),
        ]
    code += [
        ("label", "allow"),
        (_RET, _ALLOW),
        ("label", "eperm"),
        (_RET, errno(EPERM)),
        ("label", "enosys"),
        (_RET, errno(ENOSYS)),
        ("label", "foreign"),
        (_RET, errno(ENOSYS)),
    ]
    return _assemble(code)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_char_p))


def install() -> None:
    """Load the filter for this machine's ABI into the calling process (root, or after
    no_new_privs); an unknown architecture is an error, never an unfiltered container."""
    machine = platform.machine()
    if machine not in ABIS:
        raise OSError(f"no seccomp filter for the {machine} architecture")
    code = program(ABIS[machine])
    fprog = _SockFprog(len(code) // 8, code)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_seccomp, seccomp_mode_filter = 22, 2
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")


if __name__ == "__main__":
    # python -I -m intercept_proxy.runtime.seccomp COMMAND...: COMMAND under the filter (what
    # `exec` into a filtered container runs, as the container itself did).
    import os
    import sys

    install()
    os.execvp(sys.argv[1], sys.argv[1:])
