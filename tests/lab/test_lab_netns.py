"""The generic namespace helpers in intercept_proxy.netns."""

import subprocess
import time

import pytest

from intercept_proxy import netns


def test_unique_prefix_is_short_and_varies():
    prefixes = {netns.unique_prefix() for _ in range(50)}
    assert len(prefixes) > 45
    assert all(
        len(p) == 7 and p.startswith("ipx") and p.isalnum() and p.islower() for p in prefixes
    )


def test_exec_argv():
    assert netns.exec_argv("n1", ["curl", "-s"]) == ["ip", "netns", "exec", "n1", "curl", "-s"]


@pytest.mark.netns
def test_create_run_delete(prefix):
    name = f"{prefix}h1"
    netns.create(name)
    try:
        assert name in netns.namespaces()
        assert netns.links(name) == ["lo"]
        assert "UP" in netns.ip("-n", name, "link", "show", "lo")
        result = netns.run(name, ["cat", "/proc/net/dev"])
        assert result.returncode == 0 and "eth0" not in result.stdout
        with pytest.raises(netns.NetnsError, match="File exists"):
            netns.create(name)
    finally:
        netns.delete(name)
    assert not netns.exists(name)
    netns.delete(name)  # deleting what is gone is fine


@pytest.mark.netns
def test_nameservers_apply_to_commands_in_the_namespace(prefix):
    name = f"{prefix}h2"
    netns.create(name)
    try:
        netns.set_nameservers(name, ["198.18.0.53", "fd00::53"])
        out = netns.run(name, ["cat", "/etc/resolv.conf"]).stdout
        assert out == "nameserver 198.18.0.53\nnameserver fd00::53\n"
    finally:
        netns.delete(name)
    assert not (netns.NETNS_ETC_DIR / name).exists()


@pytest.mark.netns
def test_cleanup_kills_processes_and_removes_namespaces_and_stray_links(prefix):
    sub = f"{prefix}k"
    netns.create(f"{sub}1")
    netns.create(f"{sub}2")
    # One pair straddling this namespace and another: the stray end here carries the prefix.
    netns.add_veth(f"{sub}v0", None, f"{sub}v1", f"{sub}2")
    sleeper = subprocess.Popen(netns.exec_argv(f"{sub}1", ["sleep", "60"]))
    try:
        deadline = time.monotonic() + 5
        while netns.pids(f"{sub}1") != [sleeper.pid] and time.monotonic() < deadline:
            time.sleep(0.01)  # `ip netns exec` enters the namespace just after the fork
        assert netns.pids(f"{sub}1") == [sleeper.pid]
        removed = netns.cleanup(sub)
        assert sleeper.wait(timeout=5) == -9
    finally:
        sleeper.kill()
    assert sorted(removed) == [f"link {sub}v0", f"netns {sub}1", f"netns {sub}2"]
    assert not [n for n in netns.namespaces() if n.startswith(sub)]
    assert not [n for n in netns.links() if n.startswith(sub)]


def test_interface_names_are_limited_to_15_characters():
    with pytest.raises(netns.NetnsError, match="longer than 15"):
        netns.add_veth("a" * 16, None, "b", None)


def test_cleanup_refuses_an_empty_prefix():
    with pytest.raises(ValueError, match="non-empty prefix"):
        netns.cleanup("")
