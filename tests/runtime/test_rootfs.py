"""A container's root filesystem: which of this machine's filesystems it mirrors, and paths from a
manifest resolved inside it, never outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from intercept_proxy.runtime.mounts import MountError, open_beneath
from intercept_proxy.runtime.rootfs import hidden, mirrored

MOUNTINFO = r"""22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:3 - devtmpfs udev rw
25 22 0:22 / /sys rw shared:4 - sysfs sysfs rw
26 22 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
27 22 252:2 / /home rw,relatime shared:6 - ext4 /dev/vda2 rw
28 27 252:3 / /home/alice/My\040Data rw shared:7 - xfs /dev/vda3 rw
29 22 252:4 / /boot rw shared:8 - ext4 /dev/vda4 rw
30 29 252:5 / /boot/efi rw shared:9 - vfat /dev/vda5 rw
31 22 0:24 / /tmp rw shared:10 - tmpfs tmpfs rw
32 22 252:1 /srv /var/tmp rw shared:1 - ext4 /dev/vda1 rw
33 22 0:25 / /mnt/cache rw shared:11 - tmpfs tmpfs rw
34 22 0:26 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
35 22 0:27 / /media/usb rw - fuse.sshfs host:/ rw
36 26 0:4 net:[4026532] /run/netns/a rw - nsfs nsfs rw
37 22 252:6 / /data rw shared:12 - btrfs /dev/vda6 rw
"""


def test_only_this_machines_other_real_filesystems_are_mirrored_parents_first():
    assert mirrored(MOUNTINFO, excluded=["/data"]) == [
        "/home",
        "/boot",
        "/boot/efi",
        "/home/alice/My Data",
    ]


def test_only_the_parts_of_an_installation_in_directories_that_start_empty_are_bound():
    paths = [Path(p) for p in ("/tmp/c/.venv", "/tmp/c/src", "/tmp/c/.venv/lib", "/tmp", "/srv/x",
                                "/var/tmp/y", "/run/z", "/tmpx/w")]  # fmt: skip
    assert hidden(paths) == [
        Path(p) for p in ("/run/z", "/tmp/c/.venv", "/tmp/c/src", "/var/tmp/y")
    ]


@pytest.fixture
def root(tmp_path):
    """A container root holding links that point out of it, absolutely and relatively."""
    top = tmp_path / "root"
    (top / "etc").mkdir(parents=True)
    (top / "abs").symlink_to("/etc")  # absolute: /etc of the container, not of this machine
    (top / "up").symlink_to("../../../../..")  # climbs no higher than the container's root
    (top / "loop").symlink_to("loop")
    (top / "file").write_text("")
    fd = os.open(top, os.O_PATH | os.O_DIRECTORY)
    yield top, fd
    os.close(fd)


def resolved(fd: int) -> Path:
    try:
        return Path(f"/proc/self/fd/{fd}").readlink()
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("path", "inside"),
    [
        ("/abs/intercept-test/x", "etc/intercept-test/x"),
        ("/up/etc/y", "etc/y"),
        ("/../../etc/z", "etc/z"),
        ("/a/./b/../c", "a/c"),
        ("/", ""),
    ],
)
def test_paths_resolve_inside_the_root_and_missing_parts_are_made_there(root, path, inside):
    top, fd = root
    assert resolved(open_beneath(fd, path)) == (top / inside if inside else top)
    assert (top / inside).is_dir()
    assert not Path("/etc/intercept-test").exists() and not Path("/etc/y").exists()


def test_a_missing_file_target_is_made_as_a_file(root):
    top, fd = root
    assert resolved(open_beneath(fd, "/abs/resolv.conf", file=True)) == top / "etc/resolv.conf"
    assert (top / "etc/resolv.conf").is_file()


@pytest.mark.parametrize(("path", "problem"), [("/loop/x", "too many"), ("/file/x", "not a dir")])
def test_loops_and_files_in_the_middle_are_refused(root, path, problem):
    with pytest.raises(MountError, match=problem):
        open_beneath(root[1], path)
