"""A real lab with a client namespace attached: what each protocol answers and records."""

import gzip
import itertools
import json
import stat
import subprocess
import sys
import time

import pytest

from intercept_proxy import netns
from intercept_proxy.lab import LabError
from intercept_proxy.lab.receipts import RECEIPT_KEYS

pytestmark = pytest.mark.netns


def after(lab, mark):
    """Receipts logged after `mark` (a count of receipts taken earlier)."""
    return lab.receipts()[mark:]


def v4_resolve(lab, name, port=443):
    return f"{name}:{port}:{lab.host(name).ipv4}"


def v6_resolve(lab, name, port=443):
    return f"{name}:{port}:[{lab.host(name).ipv6}]"


@pytest.mark.parametrize("resolve", [v4_resolve, v6_resolve], ids=["ipv4", "ipv6"])
def test_https_echo(lab, client, tools, resolve):
    out = tools.curl(
        client,
        "https://api.github.com/repos/x?page=2&q=a%20b",
        "-X",
        "PUT",
        "-H",
        "X-Probe: one",
        "--data-binary",
        "0123456789",
        resolve=resolve(lab, "api.github.com"),
    )
    echo = json.loads(out)
    assert echo["server"] == "api.github.com"
    assert echo["host"] == "api.github.com"
    assert echo["sni"] == "api.github.com"
    assert echo["method"] == "PUT"
    assert echo["path"] == "/repos/x?page=2&q=a%20b"
    assert echo["headers"]["x-probe"] == "one"
    assert echo["body_bytes"] == 10


@pytest.mark.parametrize("resolve", [v4_resolve, v6_resolve], ids=["ipv4", "ipv6"])
def test_http_echo(lab, client, tools, resolve):
    out = tools.curl(
        client,
        "http://console.anthropic.com/v1/x?y=1",
        resolve=resolve(lab, "console.anthropic.com", 80),
    )
    echo = json.loads(out)
    assert echo["server"] == "console.anthropic.com"
    assert echo["host"] == "console.anthropic.com"
    assert echo["sni"] is None
    assert echo["method"] == "GET"
    assert echo["path"] == "/v1/x?y=1"
    assert echo["body_bytes"] == 0


@pytest.mark.parametrize(
    ("host_header", "server"),
    [
        ("b.shared.test", "b.shared.test"),
        ("a.shared.test:80", "a.shared.test"),
        ("nope.test", "a.shared.test"),
    ],
)
def test_http_host_header_picks_the_server_of_a_shared_address(
    lab, client, tools, host_header, server
):
    mark = len(lab.receipts())
    out = tools.curl(client, "http://198.18.2.1/", "-H", f"Host: {host_header}")
    assert json.loads(out)["server"] == server
    # The connection alone cannot tell which of the two hosts it is for; the request can.
    tcp, http = after(lab, mark)
    assert (tcp["protocol"], tcp["host"]) == ("tcp", None)
    assert (http["protocol"], http["host"]) == ("http", server)


@pytest.mark.parametrize(
    "order", [("a.shared.test", "b.shared.test"), ("b.shared.test", "a.shared.test")]
)
def test_two_names_on_one_address_each_get_their_own_certificate(lab, client, tools, order):
    address = lab.host("a.shared.test").ipv4
    assert lab.host("b.shared.test").ipv4 == address
    jobs = [
        {"op": "tls", "address": address, "sni": name, "cafile": str(lab.ca_cert_path)}
        for name in order
    ]
    results = tools.client(client, *jobs)
    assert [r["san"] for r in results] == [[name] for name in order]
    # curl checks the name too, and the echo says who answered.
    for name in order:
        out = tools.curl(client, f"https://{name}/", resolve=f"{name}:443:[{lab.host(name).ipv6}]")
        assert json.loads(out)["server"] == name


def test_unknown_or_missing_sni_gets_the_first_host_of_the_address(lab, client, tools):
    shared, api = lab.host("a.shared.test").ipv4, lab.host("api.github.com").ipv6
    ca = str(lab.ca_cert_path)
    results = tools.client(
        client,
        {"op": "tls", "address": shared, "sni": "unknown.test", "cafile": ca},
        {"op": "tls", "address": shared, "sni": None, "cafile": ca},
        # A lab name on another address is not served here: certificates are per address.
        {"op": "tls", "address": shared, "sni": "api.github.com", "cafile": ca},
        {"op": "tls", "address": api, "sni": "b.shared.test", "cafile": ca},
    )
    assert [r["san"] for r in results] == [
        ["a.shared.test"],
        ["a.shared.test"],
        ["a.shared.test"],
        ["api.github.com"],
    ]
    out = tools.curl(client, "https://unknown.test/", "-k", resolve=f"unknown.test:443:{shared}")
    echo = json.loads(out)
    assert (echo["server"], echo["sni"]) == ("a.shared.test", "unknown.test")


def test_delay(lab, client, tools):
    started = time.monotonic()
    out = tools.curl(
        client, "https://api.github.com/delay/2?x=1", resolve=v4_resolve(lab, "api.github.com")
    )
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.0
    assert json.loads(out)["path"] == "/delay/2?x=1"


@pytest.mark.parametrize("size", [0, 1, 200_001])
def test_bytes(lab, client, tools, size):
    out = tools.curl(
        client,
        f"https://api.github.com/bytes/{size}",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{content_type}",
        resolve=v4_resolve(lab, "api.github.com"),
    )
    assert out == f"{size} application/octet-stream"


def test_stream_sends_one_event_per_second(lab, client, tools):
    (result,) = tools.client(
        client,
        {"op": "sse", "url": "https://api.github.com/stream/3", "cafile": str(lab.ca_cert_path)},
    )
    assert result["status"] == 200
    assert result["content_type"].startswith("text/event-stream")
    events = result["events"]
    assert [e["data"]["event"] for e in events] == [1, 2, 3]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(events)]
    assert all(0.8 < gap < 2.0 for gap in gaps), gaps


@pytest.mark.parametrize("scheme", ["wss", "ws"])
def test_websocket_echo(lab, client, tools, scheme):
    (result,) = tools.client(
        client,
        {
            "op": "ws",
            "url": f"{scheme}://console.anthropic.com/ws",
            "cafile": str(lab.ca_cert_path),
            "messages": ["hello", [0, 1, 255], "bye"],
        },
    )
    assert result["echoed"] == ["hello", [0, 1, 255], "bye"]


def test_dns_answers_lab_names_and_nothing_else(lab, client, tools):
    api = lab.host("api.github.com")
    resolver_v4, resolver_v6 = lab.dns_servers
    mark = len(lab.receipts())
    results = tools.client(
        client,
        {"op": "dns", "server": resolver_v4, "name": "api.github.com", "type": "A"},
        {"op": "dns", "server": resolver_v6, "name": "API.GitHub.com.", "type": "AAAA"},
        {"op": "dns", "server": resolver_v4, "name": "example.com", "type": "A"},
        {"op": "dns", "server": resolver_v4, "name": "x.api.github.com", "type": "AAAA"},
        {"op": "dns", "server": resolver_v4, "name": "api.github.com", "type": "MX"},
        # Every host address answers DNS too, for lab names other than its own.
        {
            "op": "dns",
            "server": lab.host("console.anthropic.com").ipv6,
            "name": "github.com",
            "type": "A",
        },
    )
    assert all(r["id_matches"] and r["aa"] for r in results)
    assert [(r["rcode"], r["answers"]) for r in results] == [
        ("NOERROR", [["A", api.ipv4, "api.github.com."]]),
        ("NOERROR", [["AAAA", api.ipv6, "API.GitHub.com."]]),
        ("NXDOMAIN", []),
        ("NXDOMAIN", []),
        ("NOERROR", []),
        ("NOERROR", [["A", lab.host("github.com").ipv4, "github.com."]]),
    ]
    lab.wait_for_receipts(lambda r: True, count=mark + 6)
    assert [(r["address"], r["host"], r["port"], r["query_name"]) for r in after(lab, mark)] == [
        (resolver_v4, None, 53, "api.github.com"),
        (resolver_v6, None, 53, "api.github.com"),
        (resolver_v4, None, 53, "example.com"),
        (resolver_v4, None, 53, "x.api.github.com"),
        (resolver_v4, None, 53, "api.github.com"),
        ("fd00::10", "console.anthropic.com", 53, "github.com"),
    ]


@pytest.mark.parametrize("family", ["-4", "-6"])
def test_names_resolve_through_the_lab_resolver(lab, client, tools, family):
    """No --resolve: the client's resolv.conf names the lab, so curl asks it (A or AAAA)."""
    out = tools.curl(client, "https://console.anthropic.com/hi", family, "-w", " %{remote_ip}")
    body, remote_ip = out.rsplit(" ", 1)
    host = lab.host("console.anthropic.com")
    assert remote_ip == (host.ipv4 if family == "-4" else host.ipv6)
    assert json.loads(body)["server"] == "console.anthropic.com"
    getent = tools.run(client, "getent", "ahosts", "github.com").stdout.split()
    assert lab.host("github.com").ipv4 in getent and lab.host("github.com").ipv6 in getent


def test_record_only_ports(lab, client, tools):
    host = lab.host("console.anthropic.com")
    jobs = []
    for address in (host.ipv4, host.ipv6):
        jobs += [
            {"op": "tcp", "address": address, "port": port, "data": "SSH-2.0-x\r\n"}
            for port in (22, 8080, 8443)
        ]
        jobs += [{"op": "udp", "address": address, "port": port} for port in (443, 8125)]
    mark = len(lab.receipts())
    results = tools.client(client, *jobs)
    assert all(r.get("connected", True) for r in results), results
    lab.wait_for_receipts(lambda r: True, count=mark + 10)
    got = sorted((r["protocol"], r["address"], r["port"], r["host"]) for r in after(lab, mark))
    expected = sorted(
        (proto, address, port, "console.anthropic.com")
        for address in (host.ipv4, host.ipv6)
        for proto, ports in (("tcp", (22, 8080, 8443)), ("udp", (443, 8125)))
        for port in ports
    )
    assert got == expected


def test_git_clone_and_push(lab, client, tools, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_SSL_CAINFO": str(lab.ca_cert_path),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
    }

    def git(*args, **kw):
        return tools.run(
            client, "git", "-C", str(work), *args, env={**env, **kw.pop("env", {})}, **kw
        )

    git("clone", "-q", "https://github.com/octo/hello.git", "first")
    first = work / "first"
    assert (first / "README.md").read_text().startswith("# octo/hello")
    (first / "blob.bin").write_bytes(bytes(range(256)) * 1200)  # bigger than the post buffer
    git("-C", "first", "add", "blob.bin")
    git("-C", "first", "commit", "-qm", "add blob")
    pushed = git("-C", "first", "rev-parse", "HEAD").stdout.strip()
    # A post buffer smaller than the pack makes git send the push body chunked.
    push = git(
        "-C",
        "first",
        "-c",
        "http.postBuffer=65536",
        "push",
        "origin",
        "main",
        env={"GIT_TRACE_CURL": "1"},
    )
    assert "Transfer-Encoding: chunked" in push.stderr
    served = git("ls-remote", "https://github.com/octo/hello", "refs/heads/main").stdout.split()[0]
    assert served == pushed
    git("clone", "-q", "https://github.com/octo/hello", "second")
    assert (work / "second" / "blob.bin").read_bytes() == (first / "blob.bin").read_bytes()
    paths = {
        r["path"] for r in lab.receipts() if r["host"] == "github.com" and r["protocol"] == "https"
    }
    assert "/octo/hello.git/git-receive-pack" in paths
    assert "/octo/hello/info/refs?service=git-upload-pack" in paths


def test_receipts_are_exact_for_a_known_sequence(lab, client, tools):
    api, console = lab.host("api.github.com"), lab.host("console.anthropic.com")
    mark = len(lab.receipts())
    started = time.time()
    tools.curl(
        client, "http://api.github.com/one?a=1", resolve=v4_resolve(lab, "api.github.com", 80)
    )
    tools.curl(
        client,
        "https://console.anthropic.com/two",
        "--data-binary",
        "x",
        resolve=v6_resolve(lab, "console.anthropic.com"),
    )
    tools.client(
        client,
        {"op": "dns", "server": lab.dns_servers[0], "name": "nothing.test", "type": "A"},
        {"op": "udp", "address": api.ipv4, "port": 8125},
    )
    lab.wait_for_receipts(lambda r: r["protocol"] == "udp" and r["time"] >= started)
    receipts = after(lab, mark)
    assert all(tuple(r) == RECEIPT_KEYS for r in receipts)
    times = [r.pop("time") for r in receipts]
    assert times == sorted(times) and started <= times[0] and times[-1] <= time.time()
    base = dict.fromkeys(RECEIPT_KEYS[1:])
    assert receipts == [
        {**base, "host": "api.github.com", "address": api.ipv4, "protocol": "tcp", "port": 80},
        {
            **base,
            "host": "api.github.com",
            "address": api.ipv4,
            "protocol": "http",
            "port": 80,
            "method": "GET",
            "path": "/one?a=1",
        },
        {
            **base,
            "host": "console.anthropic.com",
            "address": console.ipv6,
            "protocol": "tcp",
            "port": 443,
        },
        {
            **base,
            "host": "console.anthropic.com",
            "address": console.ipv6,
            "protocol": "https",
            "port": 443,
            "sni": "console.anthropic.com",
            "method": "POST",
            "path": "/two",
        },
        {
            **base,
            "address": lab.dns_servers[0],
            "protocol": "dns",
            "port": 53,
            "query_name": "nothing.test",
        },
        {**base, "host": "api.github.com", "address": api.ipv4, "protocol": "udp", "port": 8125},
    ]


def test_every_log_line_is_a_receipt(lab):
    lines = lab.log_path.read_text().splitlines()
    assert lines, "earlier tests should have produced receipts"
    for line in lines:
        assert tuple(json.loads(line)) == RECEIPT_KEYS


def test_attached_namespaces_reach_the_lab_but_not_each_other(lab, client, tools, make_netns):
    other = make_netns("c2")
    link = lab.connect(other)
    # Something listens in `other` on its link addresses; `client` must still not get there.
    listener = subprocess.Popen(
        netns.exec_argv(
            other,
            [
                sys.executable,
                "-c",
                "import socket,time\n"
                f"a=socket.create_server(('{link.peer_ipv4}',9999))\n"
                f"b=socket.create_server(('{link.peer_ipv6}',9999),family=socket.AF_INET6)\n"
                "print('up',flush=True);time.sleep(30)",
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout.readline() == "up\n"
        results = tools.client(
            client,
            {"op": "tcp", "address": link.peer_ipv4, "port": 9999, "timeout": 0.5},
            {"op": "tcp", "address": link.peer_ipv6, "port": 9999, "timeout": 0.5},
            {"op": "tcp", "address": lab.host("api.github.com").ipv4, "port": 22},
        )
        assert [r["connected"] for r in results] == [False, False, True]
        # ...while `other` itself reaches the lab over both families.
        for resolve in (v4_resolve, v6_resolve):
            out = tools.curl(
                other, "https://api.github.com/", resolve=resolve(lab, "api.github.com")
            )
            assert json.loads(out)["server"] == "api.github.com"
    finally:
        listener.kill()
        listener.wait()


def test_connecting_a_namespace_twice_fails(lab, client):
    with pytest.raises(LabError, match="already connected"):
        lab.connect(client)


def test_file_modes(lab):
    assert stat.S_IMODE(lab.ca_cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(lab.ca_cert_path.parent.stat().st_mode) == 0o755
    keys = list((lab.state_dir / "certs").glob("*.key"))
    assert len(keys) == len(lab.hosts)
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat"]
    as_nobody = subprocess.run([*nobody, str(lab.ca_cert_path)], capture_output=True, check=False)
    assert as_nobody.returncode == 0 and as_nobody.stdout == lab.ca_cert_path.read_bytes()
    assert subprocess.run([*nobody, str(keys[0])], capture_output=True, check=False).returncode != 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/bytes/1073741825", "size is limited to 1073741824"),
        ("/delay/601", "delay is limited to 600"),
        ("/stream/3601", "event count is limited to 3600"),
    ],
)
def test_special_paths_have_limits(lab, client, tools, path, message):
    result = tools.run(
        client,
        "curl",
        "-sS",
        "-w",
        "%{http_code}",
        "--cacert",
        str(lab.ca_cert_path),
        "--resolve",
        v4_resolve(lab, "api.github.com"),
        f"https://api.github.com{path}",
    )
    assert result.stdout == f"{message}\n400"


def test_git_accepts_gzip_request_bodies(lab, client, tools, tmp_path):
    """git gzips big upload-pack requests; the body must reach http-backend compressed, with
    its Content-Encoding, for it to inflate."""
    repo = lab.state_dir / "repos" / "github.com" / "octo" / "hello.git"
    head = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    want = f"want {head} no-progress\n"
    body = tmp_path / "request.gz"
    body.write_bytes(gzip.compress(f"{len(want) + 4:04x}{want}00000009done\n".encode()))
    response = tmp_path / "response"
    tools.curl(
        client,
        "https://github.com/octo/hello.git/git-upload-pack",
        "-H",
        "Content-Type: application/x-git-upload-pack-request",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        f"@{body}",
        "-o",
        str(response),
    )
    assert response.read_bytes().startswith(b"0008NAK\nPACK")


def test_server_logged_no_errors(lab):
    """Runs last: no handler of any test above crashed or complained."""
    assert (lab.state_dir / "server.log").read_text() == ""
