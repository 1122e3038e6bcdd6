"""Becoming a container's identity with system calls, then proving it from the kernel's view. Run
in a forked child of this (root) test process, which keeps its own privileges."""

from __future__ import annotations

import os
import traceback

import pytest

from intercept_proxy.runtime.privileges import Identity, PrivilegeError, become, verify


def in_child(action) -> str:
    """Run `action` in a forked child; '' when it returned, else its error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            action()
            message = b""
        except BaseException:
            message = traceback.format_exc().encode() or b"?"
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.parametrize(
    "who",
    [
        Identity(12345, 12345, (), (), no_new_privileges=True),
        Identity(12345, 23456, (3000, 4000), (), no_new_privileges=True),
        # A non-root user keeps an added capability across exec: ambient.
        Identity(12345, 12345, (), ("NET_BIND_SERVICE",), no_new_privileges=True),
        # proxy-init: root, with exactly its two capabilities.
        Identity(0, 0, (), ("NET_ADMIN", "NET_RAW"), no_new_privileges=True),
    ],
    ids=["plain", "groups", "ambient", "root-two-caps"],
)
def test_the_kernel_agrees_with_the_identity(who):
    def action():
        become(who)
        verify(who, seccomp=False)

    assert in_child(action) == ""


def test_a_process_that_is_not_what_was_asked_is_refused():
    asked = Identity(12345, 12345, (), (), no_new_privileges=True)

    def action():
        become(Identity(12345, 12346, (), (), no_new_privileges=False))
        verify(asked, seccomp=False)

    error = in_child(action)
    assert PrivilegeError.__name__ in error
    assert "Gid is '12346 12346 12346 12346', not '12345 12345 12345 12345'" in error
    assert "NoNewPrivs is '0', not '1'" in error
