"""The egress gateway (xds/gateway.py): real clients set HTTPS_PROXY/HTTP_PROXY to it, and
their requests are judged, logged and answered as intercepted ones are, on the real data path
(Envoy, the agent, the lab's hosts)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from intercept_proxy import netns, ports
from intercept_proxy.lab.interceptor import INTERCEPT
from intercept_proxy.runtime.containers import as_user
from intercept_proxy.xds.envoy import client_connections
from intercept_proxy.xds.gateway import PROXIED
from tests.decisions import read_decisions
from tests.integration.conftest import LAB_SPEC, POLICY
from tests.integration.harness import WORKLOAD_UID, Interceptor

pytestmark = pytest.mark.netns

PORT = ports.ENVOY_GATEWAY
PROXY = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def interceptor_options():
    return {"gateway_port": PORT}


def run(icp: Interceptor, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """`argv` as the workload's user in the client namespace."""
    return subprocess.run(
        netns.exec_argv(icp.ns, as_user(WORKLOAD_UID, argv)),
        capture_output=True, text=True, timeout=60, check=False, **kwargs,
    )  # fmt: skip


def curl(icp: Interceptor, url: str, *args: str, proxy: str = PROXY) -> tuple[int, str, str]:
    """Status, body and curl's messages (its HTTP version last) of `url` through the gateway."""
    out = run(icp, [
        "curl", "-sS", "-x", proxy, "--cacert", str(icp.ca_cert),
        "-w", "\n%{http_code}%{stderr}%{http_version}", *args, url,
    ])  # fmt: skip
    body, _, status = out.stdout.rpartition("\n")
    return int(status or 0), body, out.stderr


def test_https_through_a_tunnel_http1_and_http2(interceptor, lab):
    for version in ("--http1.1", "--http2"):
        status, body, err = curl(interceptor, f"https://pypi.org/simple/{version[2:]}", version)
        assert status == 200, err
        assert json.loads(body)["path"] == f"/simple/{version[2:]}"
        assert err.endswith("1.1" if version == "--http1.1" else "2")
    # Logged by the TLS listener's copy, exactly as an intercepted request, with its client.
    [h2] = interceptor.decisions(lambda d: d["path"] == "/simple/http2")
    assert (h2["judge"], h2["rule"], h2["sni"], h2["scheme"], h2["client"]) == (
        "envoy", "allowed_domains", "pypi.org", "https", "127.0.0.1"
    )  # fmt: skip
    # A request intercepted without the gateway has no client of the gateway's.
    assert interceptor.curl("GET", "https://pypi.org/no-gateway").status == 200
    [direct] = interceptor.decisions(lambda d: d["path"] == "/no-gateway")
    assert direct["client"] is None


def test_a_host_the_policy_denies_whatever_is_asked_gets_no_tunnel(interceptor, lab):
    """Its CONNECT gets the policy's explained denial, logged with the policy's revision; a
    host where the request decides gets its tunnel, and the request its explained 403."""
    connect = b"CONNECT Unknown.Example.:443 HTTP/1.1\r\nHost: unknown.example:443\r\n\r\n"
    text = proxy_exchange(interceptor, connect)
    assert text.startswith("HTTP/1.1 403"), text
    error = json.loads(text.partition("\n\n")[2])["error"]
    assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "default_deny")
    assert error["message"] == (
        "CONNECT Unknown.Example:443 is not allowed by the policy (no rule matches it)"
    )
    [logged] = interceptor.decisions(lambda d: d["decision_id"] == error["decision_id"])
    assert (logged["method"], logged["judge"], logged["allow"]) == ("CONNECT", "envoy", False)
    assert logged["policy_revision"] == interceptor.readiness()["policy_revision"]
    status, body, _ = curl(interceptor, "https://pypi.org/denied-inside", "-X", "POST")
    error = json.loads(body)["error"]
    assert (status, error["rule"]) == (403, "method_not_allowed")
    assert error["message"].startswith("POST pypi.org:443")
    assert not [r for r in lab.receipts() if r["path"] == "/denied-inside"]


def test_plain_http_absolute_form(interceptor):
    status, body, err = curl(
        interceptor, "http://pypi.org/plain",
        "-H", "Proxy-Authorization: Basic dTpw", "-H", "X-Forwarded-Proto: https",
    )  # fmt: skip
    assert status == 200, err
    echoed = json.loads(body)
    assert echoed["path"] == "/plain"
    # The client's credentials for its proxy go no further; its word on the scheme neither
    # (judged and logged as the plain HTTP it is, below).
    assert "proxy-authorization" not in echoed["headers"]
    assert "x-forwarded-proto" not in echoed["headers"]
    status, body, _ = curl(interceptor, "http://unknown.example/plain")
    assert status == 403 and json.loads(body)["error"]["rule"] == "default_deny"
    logged = interceptor.decisions(lambda d: d["path"] == "/plain", 2)
    assert [(d["scheme"], d["host"], d["allow"]) for d in logged] == [
        ("http", "pypi.org", True), ("http", "unknown.example", False)
    ]  # fmt: skip


def test_a_client_gone_leaves_no_connection_a_drain_waits_for(interceptor):
    """The gateway's pooled connections to its own listeners' copies outlive the clients they
    served: the drain of a stopping replica counts the clients' connections alone, a client's
    plain-HTTP stream as long as it lasts."""
    streaming = subprocess.Popen(
        netns.exec_argv(
            interceptor.ns,
            as_user(WORKLOAD_UID, ["curl", "-sS", "-N", "-x", PROXY, "http://pypi.org/stream/3"]),
        ),
        stdout=subprocess.PIPE,
    )
    try:
        assert streaming.stdout is not None
        streaming.stdout.readline()  # its first event: the stream is under way
        in_flight = interceptor.envoy_stats("downstream_cx_active")["stats"]
        assert client_connections(in_flight) == 1, in_flight
    finally:
        streaming.communicate(timeout=30)
    assert streaming.returncode == 0
    deadline = time.monotonic() + 5
    while True:
        stats = interceptor.envoy_stats("downstream_cx_active")["stats"]
        active = {s["name"]: s["value"] for s in stats}
        if client_connections(stats) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert client_connections(stats) == 0, active
    assert active[f"listener.envoy_internal_{PROXIED}.downstream_cx_active"] > 0, active


def test_one_decision_line_per_request(interceptor):
    """The copy that judged logs it; the gateway only what it answered itself."""
    curl(interceptor, "http://unknown.example/once")
    curl(interceptor, "https://pypi.org/once", "-X", "POST")
    curl(interceptor, "https://pypi.org/missing-once")  # the upstream's 404 is no refusal
    interceptor.decisions(lambda d: "once" in (d["path"] or ""), 3)
    time.sleep(1.5)  # Envoy writes its log every second: a second line would be there now
    lines = [d for d in read_decisions(interceptor.decision_log) if "once" in (d["path"] or "")]
    assert sorted((d["path"], d["scheme"]) for d in lines) == [
        ("/missing-once", "https"), ("/once", "http"), ("/once", "https")
    ]  # fmt: skip
    curl(interceptor, "https://unknown.example/once")  # refused before its tunnel, by the gateway
    [refused] = interceptor.decisions(lambda d: d["host"] == "unknown.example:443", 1)
    time.sleep(1.5)
    logged = read_decisions(interceptor.decision_log)
    assert [d for d in logged if d["host"] == "unknown.example:443"] == [refused]


def test_https_in_the_clear_is_refused(interceptor, lab):
    """`GET https://...` to the gateway itself (some clients' proxy support does that) would
    go upstream unencrypted: refused, whatever the client says of its scheme."""
    for extra in ("", "X-Forwarded-Proto: https\r\n"):
        request = f"GET https://pypi.org/clear HTTP/1.1\r\nHost: pypi.org\r\n{extra}\r\n"
        text = proxy_exchange(interceptor, request.encode())
        assert text.startswith("HTTP/1.1 403"), text
        error = json.loads(text.partition("\n\n")[2])["error"]
        assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "gateway_https_in_the_clear")
    logged = interceptor.decisions(lambda d: d["path"] == "/clear", 2)
    assert {(d["judge"], d["allow"], d["status"]) for d in logged} == {("envoy", False, 403)}
    assert not [r for r in lab.receipts() if r["path"] == "/clear"]


def test_each_request_is_logged_with_its_own_client(interceptor):
    """The address each client connected from: no header says otherwise, and two clients'
    requests in turn (plain HTTP, over Envoy's pooled internal connections; tunnels) are never
    logged as each other's."""
    forged = ("-H", "X-Forwarded-For: 10.9.9.9", "--proxy-header", "X-Forwarded-For: 10.9.9.8")
    # Rounds: each of Envoy's workers pools its internal connections, so some request comes
    # when another client's connection idles in its pool.
    for round_ in range(4):
        for proxy in (PROXY, f"http://[::1]:{PORT}"):
            for url in (f"http://pypi.org/who-{round_}", f"https://pypi.org/who-{round_}"):
                status, _, err = curl(interceptor, url, *forged, proxy=proxy)
                assert status == 200, err
    logged = interceptor.decisions(lambda d: (d["path"] or "").startswith("/who-"), 16)
    clients = [(d["path"], d["scheme"], d["client"]) for d in logged]
    assert sorted(clients) == sorted(
        (f"/who-{r}", scheme, client)
        for r in range(4)
        for client in ("127.0.0.1", "::1")
        for scheme in ("http", "https")
    ), clients


def test_ipv6_listener(interceptor):
    status, _, err = curl(interceptor, "https://pypi.org/v6", proxy=f"http://[::1]:{PORT}")
    assert status == 200, err


def test_tunnels_to_other_ports_are_refused_and_logged(interceptor):
    """Port 443 only: not ssh, not plain HTTP in a tunnel, not the sidecars' own ports."""
    for target in ("pypi.org:22", "pypi.org:80", "pypi.org:8443", "127.0.0.1:15000", "[::1]:15021"):
        connect = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        text = proxy_exchange(interceptor, connect)
        assert text.startswith("HTTP/1.1 403"), text
        error = json.loads(text.partition("\n\n")[2])["error"]  # text: CRLF read as LF
        assert (error["code"], error["rule"]) == ("POLICY_BLOCKED", "gateway_tunnel_port")
        assert error["message"] == f"CONNECT {target}: the gateway opens tunnels to port 443 only"
    [logged] = interceptor.decisions(lambda d: d["host"] == "pypi.org:8443")
    assert (logged["judge"], logged["allow"], logged["rule"], logged["status"]) == (
        "envoy", False, "gateway_tunnel_port", 403
    )  # fmt: skip
    assert logged["client"] == "127.0.0.1"


def proxy_exchange(icp: Interceptor, request: bytes) -> str:
    """`request` sent to the gateway, its answer read (it must have a length)."""
    script = textwrap.dedent(f"""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
        s.sendall(sys.stdin.buffer.read())
        head, body = b"", b""
        while b"\\r\\n\\r\\n" not in head:
            head += s.recv(65536)
        head, _, body = head.partition(b"\\r\\n\\r\\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\\r\\n")[0])
        while len(body) < length:
            body += s.recv(65536)
        sys.stdout.write((head + b"\\r\\n\\r\\n" + body).decode("latin-1"))
    """)
    out = run(icp, ["/usr/bin/python3", "-c", script], input=request.decode("latin-1"))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_request_in_the_tunnel_decides_never_the_connect_line(interceptor, lab):
    """A CONNECT that names an allowed host gains nothing: the server name and the Host inside
    the tunnel are what is judged, and where the request goes. A CONNECT to a host the policy
    denies gets no tunnel, whatever would be asked inside."""
    script = textwrap.dedent(f"""
        import socket, ssl, sys
        target, inside = sys.argv[1], sys.argv[2]
        s = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
        s.sendall(f"CONNECT {{target}}:443 HTTP/1.1\\r\\nHost: {{target}}:443\\r\\n\\r\\n".encode())
        answer = s.recv(4096)
        if not answer.startswith(b"HTTP/1.1 200"):
            sys.exit("no tunnel: " + answer.split(b"\\r\\n")[0].decode())
        context = ssl.create_default_context(cafile=sys.argv[3])
        t = context.wrap_socket(s, server_hostname=inside)
        request = f"GET /lied HTTP/1.1\\r\\nHost: {{inside}}\\r\\nConnection: close\\r\\n\\r\\n"
        t.sendall(request.encode())
        print(t.recv(65536).split(b"\\r\\n")[0].decode())
    """)
    for target, inside, status in (
        ("pypi.org", "unknown.example", "403"),
        ("a.shared.test", "pypi.org", "200"),
    ):
        out = run(interceptor, ["/usr/bin/python3", "-c", script, target, inside,
                                str(interceptor.ca_cert)])  # fmt: skip
        assert out.stdout.split()[1] == status, out.stderr
    out = run(interceptor, ["/usr/bin/python3", "-c", script, "unknown.example", "pypi.org",
                            str(interceptor.ca_cert)])  # fmt: skip
    assert out.stderr.strip() == "no tunnel: HTTP/1.1 403 Forbidden", out.stderr
    lab.wait_for_receipts(lambda r: r["host"] == "pypi.org" and r["path"] == "/lied")
    assert not [r for r in lab.receipts() if r["host"] == "unknown.example"]


def test_python_urllib_with_the_proxy_variables(interceptor):
    script = textwrap.dedent("""
        import json, urllib.error, urllib.request
        print(urllib.request.urlopen("https://pypi.org/urllib").status)
        try:
            urllib.request.urlopen("https://pypi.org/urllib", data=b"x")
        except urllib.error.HTTPError as e:
            print(e.code, json.load(e)["error"]["code"])
        try:
            urllib.request.urlopen("https://unknown.example/urllib")
        except urllib.error.URLError as e:
            print(e.reason)
    """)
    env = [
        "env",
        f"HTTPS_PROXY={PROXY}",
        f"HTTP_PROXY={PROXY}",
        f"SSL_CERT_FILE={interceptor.ca_cert}",
    ]
    out = run(interceptor, [*env, "/usr/bin/python3", "-c", script])
    assert out.stdout.split("\n")[:3] == [
        "200", "403 POLICY_BLOCKED", "Tunnel connection failed: 403 Forbidden"
    ], out.stderr  # fmt: skip


def test_node_https_through_a_connect_tunnel(interceptor):
    """Node.js 20 has no proxy variables: a CONNECT request, then TLS on its socket, as proxy
    agents do."""
    script = textwrap.dedent(f"""
        const http = require("http"), https = require("https"), fs = require("fs");
        const ca = fs.readFileSync(process.argv[1]);
        function get(host, path) {{
          http.request({{host: "127.0.0.1", port: {PORT}, method: "CONNECT",
                        path: host + ":443"}}).on("connect", (res, socket) => {{
            if (res.statusCode !== 200) {{
              console.log(host, "tunnel", res.statusCode);
              return socket.destroy();
            }}
            https.get({{host, path, ca, socket, agent: false}}, (r) => {{
              console.log(host, r.statusCode);
            }});
          }}).end();
        }}
        get("pypi.org", "/node");
        get("unknown.example", "/node");
    """)
    out = run(interceptor, ["node", "-e", script, str(interceptor.ca_cert)])
    assert sorted(out.stdout.split("\n")[:2]) == [
        "pypi.org 200", "unknown.example tunnel 403"
    ], out.stderr  # fmt: skip


def test_git_clone_allowed_push_refused(interceptor):
    work = interceptor.dir / "gateway-git"
    work.mkdir()
    os.chown(work, WORKLOAD_UID, WORKLOAD_UID)
    env = [
        "env", f"HOME={work}", f"HTTPS_PROXY={PROXY}", f"GIT_SSL_CAINFO={interceptor.ca_cert}",
        "git", "-c", "user.name=t", "-c", "user.email=t@t",
    ]  # fmt: skip

    def git(*args: str, cwd: Path = work) -> subprocess.CompletedProcess[str]:
        return run(interceptor, [*env, *args], cwd=cwd)

    clone = git("clone", "https://github.com/octo/other.git")
    assert clone.returncode == 0, clone.stderr
    repo = work / "other"
    assert git("commit", "--allow-empty", "-m", "change", cwd=repo).returncode == 0
    push = git("push", "origin", "HEAD", cwd=repo)
    assert push.returncode != 0 and "403" in push.stderr
    pushed = interceptor.decisions(lambda d: "/octo/other" in (d["path"] or ""), 3)
    assert {d["rule"] for d in pushed} == {"github_read", "github_write_not_allowed"}


def test_the_gateway_listens_on_loopback_only(interceptor):
    """Locally, other machines cannot use this machine's gateway (the listener's addresses)."""
    listening = netns.run(interceptor.ns, ["ss", "-Htln", f"sport = :{PORT}"]).stdout.split()
    assert sorted({a for a in listening if a.endswith(f":{PORT}")}) == [
        f"127.0.0.1:{PORT}", f"[::1]:{PORT}"
    ]  # fmt: skip


def machine_get(proxy: str, url: str, ca: str, *args: str) -> tuple[str, str]:
    """Status and body of `url` through `proxy` for a user of this machine (the CONNECT's
    status, if that was refused)."""
    argv = [
        "curl", "-sS", "-w", "\n%{http_code} %{http_connect}", "-x", proxy, "--cacert", ca,
        "--max-time", "20", *args, url,
    ]  # fmt: skip
    out = subprocess.run(as_user(WORKLOAD_UID, argv), capture_output=True, text=True)
    body, _, statuses = out.stdout.rpartition("\n")
    status, connect = statuses.split() if statuses else ("", out.stderr)
    return connect if status == "000" else status, body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_intercept_gateway_serves_this_machine_and_removes_what_it_made(tmp_path):
    """The command: its own namespace and lab, listeners on this machine's loopback for any
    user, the ready line, the operator's policy file followed, its decision log kept, and
    nothing left after SIGTERM."""
    port = free_port()
    spec = tmp_path / "lab.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    log = tmp_path / "decisions.log"
    argv = [
        str(INTERCEPT), "gateway", "--policy", str(policy), "--lab", str(spec),
        "--listen", f"127.0.0.1:{port}", "--listen", f"[::1]:{port}", "--decision-log", str(log),
        # A client of its own: the default policy's Envoy refuses its address.
        "--client", "other=127.0.0.3/32", "--policy-for", f"other={policy}",
    ]  # fmt: skip
    before = set(netns.namespaces())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(proxy: str, url: str) -> str:
        return machine_get(proxy, url, ca)[0]

    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[:2] == ["ready", f"listen=127.0.0.1:{port},[::1]:{port}"], ready
        ca = ready[2].removeprefix("ca=")
        assert [n for n in set(netns.namespaces()) - before if n.endswith("-gw")]
        for proxy in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            assert get(proxy, "https://pypi.org/gateway") == "200"
            assert get(proxy, "https://unknown.example/gateway") == "403"
        other = machine_get(
            f"http://127.0.0.1:{port}", "https://pypi.org/other", ca, "--interface", "127.0.0.3"
        )
        assert other[0] == "200"
        # The operator edits the policy: the gateway follows.
        widened = POLICY.replace("[api.anthropic.com]", "[api.anthropic.com, unknown.example]")
        assert widened != POLICY
        policy.write_text(widened)
        deadline = time.monotonic() + 15
        while get(f"http://127.0.0.1:{port}", "https://unknown.example/later") != "200":
            assert time.monotonic() < deadline, "the new policy never applied"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert set(netns.namespaces()) <= before
    assert not Path(ca).exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    # Kept: every decision, after the gateway and its files are gone; with each client's own
    # address, which the relay passed on.
    logged = [
        d for d in read_decisions(log) if d["path"] in ("/gateway", "/later") or d["path"] is None
    ]
    assert {(d["host"], d["allow"]) for d in logged} >= {
        ("pypi.org", True), ("unknown.example:443", False), ("unknown.example", True)
    }  # fmt: skip
    assert {d["client"] for d in logged if d["path"] == "/gateway"} == {"127.0.0.1", "::1"}


def test_a_gateway_killed_without_warning_is_cleaned_up(tmp_path):
    """SIGKILL leaves its namespace, lab, sidecars, relay and files: `intercept cleanup` (as
    the next run or gateway does first) removes them."""
    spec = tmp_path / "lab.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    before = set(netns.namespaces())
    argv = [str(INTERCEPT), "gateway", "--policy", str(policy), "--lab", str(spec),
            "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ca = Path(proc.stdout.readline().split()[2].removeprefix("ca="))
    proc.kill()
    proc.wait()
    left = set(netns.namespaces()) - before
    assert left and ca.exists()  # what SIGKILL leaves
    done = subprocess.run([str(INTERCEPT), "cleanup"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(netns.namespaces()) <= before
    assert not ca.parents[1].exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_metadata_and_link_local_addresses_are_refused(interceptor):
    """An address is never a name of the policy's (and no upstream may be non-public:
    test_upstream_addresses.py)."""
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://10.0.0.1/",
    ):
        status, body, err = curl(interceptor, url)
        assert status == 403, err
        assert json.loads(body)["error"]["rule"] == "invalid_host", body


def test_each_client_is_judged_by_its_own_policy_and_an_unnamed_one_is_refused(tmp_path):
    """`--client NAME=CIDR --policy-for NAME=FILE`, without a default policy: each client's
    address (IPv4 and IPv6) picks its policy, the most specific range winning; one CA serves
    them all; a client no range names is refused, with the reason, in the decision log."""
    port = free_port()
    spec = tmp_path / "lab.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    (tmp_path / "wide.yaml").write_text(
        POLICY.replace("[api.anthropic.com]", "[api.anthropic.com, unknown.example]")
    )
    (tmp_path / "narrow.yaml").write_text(POLICY)
    log = tmp_path / "decisions.log"
    argv = [
        str(INTERCEPT), "gateway", "--lab", str(spec), "--decision-log", str(log),
        "--listen", f"127.0.0.1:{port}", "--listen", f"[::1]:{port}",
        "--client", "wide=127.0.0.2/31", "--client", "narrow=127.0.0.3/32",
        "--client", "narrow=::1/128",
        "--policy-for", f"wide={tmp_path / 'wide.yaml'}",
        "--policy-for", f"narrow={tmp_path / 'narrow.yaml'}",
    ]  # fmt: skip
    before = set(netns.namespaces())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(source: str, url: str) -> tuple[str, str]:
        """Status and body of `url` for a user of this machine at `source`."""
        proxy = f"http://[::1]:{port}" if ":" in source else f"http://127.0.0.1:{port}"
        return machine_get(proxy, url, ca, "--interface", source)

    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        ca = ready[2].removeprefix("ca=")
        for source in ("127.0.0.2", "127.0.0.3", "::1"):
            assert get(source, "https://pypi.org/clients")[0] == "200"
        assert get("127.0.0.2", "https://unknown.example/clients")[0] == "200"
        for source in ("127.0.0.3", "::1"):  # a /32 beats a /31; IPv6 too
            status, body = get(source, "http://unknown.example/clients")
            assert (status, json.loads(body)["error"]["rule"]) == ("403", "default_deny"), body
        status, body = get("127.0.0.1", "http://unknown.example/clients")
        assert (status, json.loads(body)["error"]["rule"]) == ("403", "gateway_unknown_client")
        assert get("127.0.0.1", "https://pypi.org/clients")[0] == "403"  # its CONNECT
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert set(netns.namespaces()) <= before
    logged = read_decisions(log)
    assert {(d["client"], d["host"], d["allow"], d["rule"]) for d in logged} == {
        ("127.0.0.2", "pypi.org", True, "allowed_domains"),
        ("127.0.0.3", "pypi.org", True, "allowed_domains"),
        ("::1", "pypi.org", True, "allowed_domains"),
        ("127.0.0.2", "unknown.example", True, "unrestricted_domains"),
        ("127.0.0.3", "unknown.example", False, "default_deny"),
        ("::1", "unknown.example", False, "default_deny"),
        ("127.0.0.1", "unknown.example", False, "gateway_unknown_client"),
        ("127.0.0.1", "pypi.org:443", False, "gateway_unknown_client"),
    }
    revisions = {d["client"]: d["policy_revision"] for d in logged if d["host"] == "pypi.org"}
    assert revisions["127.0.0.2"] != revisions["127.0.0.3"] == revisions["::1"]


def test_intercept_gateway_judges_with_custom_rego_modules_and_follows_their_edits(tmp_path):
    """A policy's `rego_modules` (beside it) go with it to the gateway's agent, which judges
    then (every tunnel opens: a request may change the decision); an edit of a module alone
    applies too."""
    port = free_port()
    spec = tmp_path / "lab.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    module = tmp_path / "mirror.rego"
    rule = 'allow contains {{"rule": "mirror", "reason": "the mirror"}} if {{ {} }}'
    module.write_text(
        "package intercept.custom\n"
        + rule.format('data.intercept.request.host == "unknown.example"')
    )
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + "rego_modules: [mirror.rego]\n")
    log = tmp_path / "decisions.log"
    argv = [
        str(INTERCEPT), "gateway", "--policy", str(policy), "--lab", str(spec),
        "--listen", f"127.0.0.1:{port}", "--decision-log", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ca = proc.stdout.readline().split()[2].removeprefix("ca=")
        proxy = f"http://127.0.0.1:{port}"
        assert machine_get(proxy, "https://unknown.example/custom", ca)[0] == "200"
        status, body = machine_get(proxy, "https://other.example/custom", ca)
        assert (status, json.loads(body)["error"]["rule"]) == ("403", "default_deny")
        module.write_text(  # unknown.example's /edited only
            "package intercept.custom\n"
            + rule.format(
                'data.intercept.request.host == "unknown.example"\n'
                'data.intercept.request.segments[0] == "edited"'
            )
        )
        deadline = time.monotonic() + 15
        while machine_get(proxy, "https://unknown.example/custom", ca)[0] != "403":
            assert time.monotonic() < deadline, "the edited module never applied"
            time.sleep(0.5)
        assert machine_get(proxy, "https://unknown.example/edited", ca)[0] == "200"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    logged = [d for d in read_decisions(log) if d["path"] in ("/custom", "/edited")]
    assert {(d["host"], d["path"], d["rule"], d["judge"]) for d in logged} >= {
        ("unknown.example", "/custom", "mirror", "agent"),
        ("other.example", "/custom", "default_deny", "agent"),
        ("unknown.example", "/edited", "mirror", "agent"),
        ("unknown.example", "/custom", "default_deny", "agent"),
    }


def test_intercept_gateway_asks_for_approvals_and_sends_credentials_from_its_environment(
    tmp_path,
):
    """A request that only lacks a grant waits until `intercept approvals` allows it (the
    gateway's agents are found as a pod's are); a credential's secret comes from the
    operator's environment, and the agent gets nothing else of it."""
    port = free_port()
    spec = tmp_path / "lab.yaml"
    spec.write_text(yaml.safe_dump(LAB_SPEC))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY
        + "approvals: {hosts: [unknown.example], timeout_seconds: 60}\n"
        + "credentials: [{host: api.anthropic.com, header: x-api-key, env: GATEWAY_TEST_KEY}]\n"
    )
    argv = [str(INTERCEPT), "gateway", "--policy", str(policy), "--lab", str(spec),
            "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    environ = {**os.environ, "GATEWAY_TEST_KEY": "sk-gateway-0123456789", "UNNAMED": "not-yours"}
    before = set(netns.namespaces())
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    )

    def approvals(*args: str) -> str:
        out = subprocess.run(
            [str(INTERCEPT), "approvals", *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    try:
        assert proc.stdout is not None
        ca = proc.stdout.readline().split()[2].removeprefix("ca=")
        proxy = f"http://127.0.0.1:{port}"
        status, body = machine_get(
            proxy,
            "https://api.anthropic.com/v1",
            ca,
            "-H",
            "x-api-key: intercept-proxy-placeholder",
        )
        assert (
            status == "200" and json.loads(body)["headers"]["x-api-key"] == "sk-gateway-0123456789"
        )
        made = [n for n in set(netns.namespaces()) - before if n.endswith(("-gw", "-d"))]
        processes = [pid for name in made for pid in netns.pids(name)]
        environs = {
            pid: Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in processes
        }
        agents = [
            pid
            for pid in processes
            if b" agent " in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        ]
        # The agent, Envoy, the relay and the dispatcher (the lab, a test's, aside).
        assert len(agents) == 1 and len(processes) >= 4
        for pid, environ_of in environs.items():
            secret = b"GATEWAY_TEST_KEY=sk-gateway-0123456789" in environ_of
            assert secret == (pid in agents), Path(f"/proc/{pid}/cmdline").read_bytes()
            assert not [v for v in environ_of if v.startswith(b"UNNAMED=")]
        held = subprocess.Popen(
            as_user(WORKLOAD_UID, [
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy, "--cacert", ca,
                "--max-time", "60", "https://unknown.example/held",
            ]),
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "unknown.example" not in (listed := approvals("list")):
            assert time.monotonic() < deadline, listed
            time.sleep(0.3)
        question = listed.split()[0]
        approvals("allow", question)
        assert held.communicate(timeout=30)[0] == "200"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "not-yours" not in stderr


def test_a_websocket_and_a_20_second_stream_through_tunnels(interceptor):
    """A WebSocket to an unrestricted host is a two-way channel through its tunnel; an upgrade
    to a read-only host is refused inside it, a denied host gets no tunnel; a response that
    streams for 20 seconds arrives whole, event by event."""
    script = Path(__file__).with_name("ws_client.py")
    hosts = ["api.anthropic.com", "pypi.org", "unknown.example"]
    argv = [sys.executable, str(script), str(interceptor.ca_cert), "--proxy", PROXY, *hosts]
    result = run(interceptor, argv)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "api.anthropic.com": "echo:hello", "pypi.org": 403, "unknown.example": "tunnel:403"
    }  # fmt: skip
    started = time.monotonic()
    status, body, err = curl(interceptor, "https://api.anthropic.com/stream/20", "-N")
    assert status == 200, err
    assert time.monotonic() - started >= 19
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [e["event"] for e in events] == list(range(1, 21))


def test_pip_through_the_gateway(interceptor, lab):
    """pip configured as in a pod (the proxy and trust variables): an allowed index is reached
    through its tunnel; a denied one gets the gateway's refusal."""
    env = [
        "env", f"HTTPS_PROXY={PROXY}", f"PIP_CERT={interceptor.ca_cert}",
        f"REQUESTS_CA_BUNDLE={interceptor.ca_cert}", "PIP_FIND_LINKS=",
    ]  # fmt: skip
    pip = [*env, sys.executable, "-m", "pip", "--no-cache-dir", "download", "-v", "--no-deps",
           "--retries", "0", "--timeout", "10", "--dest", "/tmp"]  # fmt: skip
    allowed = run(interceptor, [*pip, "--index-url", "https://pypi.org/simple/", "gatewaypkg"])
    # The lab serves no package index: pip finds nothing there, having asked.
    assert "No matching distribution found for gatewaypkg" in allowed.stderr, allowed.stderr
    assert "certificate" not in allowed.stdout + allowed.stderr
    lab.wait_for_receipts(lambda r: r["host"] == "pypi.org" and r["path"] == "/simple/gatewaypkg/")

    def refused(d: dict) -> bool:
        return d["host"] == "unknown.example:443"

    before = len([d for d in read_decisions(interceptor.decision_log) if refused(d)])
    denied = run(
        interceptor, [*pip, "--index-url", "https://unknown.example/simple/", "gatewaypkg"]
    )
    assert "No matching distribution found for gatewaypkg" in denied.stderr, denied.stderr
    # pip says no more of a refused tunnel; the gateway's log does.
    connect = interceptor.decisions(refused, before + 1)[-1]
    assert (connect["method"], connect["rule"]) == ("CONNECT", "default_deny")
    assert not [
        r
        for r in lab.receipts()
        if r["host"] == "unknown.example" and "gatewaypkg" in (r["path"] or "")
    ]


def test_python_requests_with_the_proxy_variables(interceptor):
    script = textwrap.dedent("""
        import requests
        print(requests.get("https://pypi.org/requests").status_code)
        answer = requests.post("https://pypi.org/requests", data=b"x")
        print(answer.status_code, answer.json()["error"]["rule"])
        try:
            requests.get("https://unknown.example/requests")
        except requests.exceptions.ProxyError as e:
            print("refused" if "403" in str(e) else e)
    """)
    env = [
        "env",
        f"HTTPS_PROXY={PROXY}",
        f"REQUESTS_CA_BUNDLE={interceptor.ca_cert}",
    ]
    out = run(interceptor, [*env, sys.executable, "-c", script])
    assert out.stdout.split("\n")[:3] == ["200", "403 method_not_allowed", "refused"], out.stderr
