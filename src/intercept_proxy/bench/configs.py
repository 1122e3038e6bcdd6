"""Everything the benchmark generates, as pure functions: the lab, the upstream (nginx), the
policy, the competitors' configurations (Envoy minimal and alone, Squid, the mitmproxy addon)
and the client's redirection rules.

Every scenario judges the same thing: GET and HEAD to the bench host names, anything else
refused, so the proxies differ in how they decide, not in what.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intercept_proxy.policy.limits import MAX_PER_MINUTE

HOST = "bench.test"
# One address for every bench name: the "never-seen" names differ only by name (SNI, Host).
HOST_IPV4 = "198.18.7.1"
HOST_IPV6 = "fd00::7:1"
PATH = "/"
BODY_BYTES = 1024  # the answer to PATH
DOWNLOAD_BYTES = 10 * 1024 * 1024
DOWNLOAD_PATH = f"/bytes/{DOWNLOAD_BYTES}"

# The credential `intercept-extras` sends (the bench's own, in a file only the agent reads).
BENCH_SECRET = "bench-secret-0123456789"
# The AWS keys `intercept-signed` signs with (the agent's environment).
BENCH_AWS_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIDBENCHEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "bench-aws-secret-0123456789",
}
# A custom module that never matches but makes the policy one that Envoy's compiled routes
# cannot decide alone: every request then goes to the agent's ext_authz (the former design).
CUSTOM_REGO = """\
package intercept.custom

allow contains {"rule": "never", "reason": "never"} if {
\tdata.intercept.request.host == "never.invalid"
}
"""


def new_host(index: int) -> str:
    return f"new{index}.{HOST}"


def bench_names(new_hosts: int) -> list[str]:
    return [HOST, *(new_host(i) for i in range(new_hosts))]


def lab_spec(new_hosts: int) -> dict[str, Any]:
    """The lab: the bench host and `new_hosts` never-seen names, all on one address that the
    lab names (DNS, certificates) and nginx serves."""
    return {
        "hosts": [
            {"name": n, "ipv4": HOST_IPV4, "ipv6": HOST_IPV6, "external": True}
            for n in bench_names(new_hosts)
        ]
    }


def nginx_conf(
    *, state_dir: Path, leaves: Mapping[str, tuple[Path, Path]], body: Path, download: Path
) -> str:
    """The upstream: nginx, one worker, HTTPS (HTTP/1.1) on the bench address for every name in
    `leaves` (certificate and key each), the files `body` at PATH (BODY_BYTES) and `download` at
    DOWNLOAD_PATH, keep-alive without limits, no log of requests."""
    servers = "".join(
        f"""\
    server {{
        listen {HOST_IPV4}:443 ssl;
        listen [{HOST_IPV6}]:443 ssl;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # A file, not the directory index that a path ending in a slash names.
        location = {PATH} {{ root {body.parent}; try_files /{body.name} =404; }}
        location = {DOWNLOAD_PATH} {{ alias {download}; }}
    }}
"""
        for name, (cert, key) in leaves.items()
    )
    temp = " ".join(f"{kind}_temp_path {state_dir}/{kind};" for kind in _NGINX_TEMP)
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {state_dir}/nginx.pid;
error_log {state_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    {temp}
{servers}}}
"""


_NGINX_TEMP = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def hosts_file(new_hosts: int) -> str:
    """/etc/hosts for a client namespace whose proxy does not answer DNS itself (every name
    listed, so neither the client nor Squid ever waits on a resolver)."""
    names = [HOST, *(new_host(i) for i in range(new_hosts))]
    return "127.0.0.1 localhost\n" + "".join(f"{HOST_IPV4} {n}\n" for n in names)


def policy_yaml(
    custom_module: str | None = None, secret_file: Path | None = None, signed: bool = False
) -> str:
    """Reads (GET, HEAD) on the bench names; with `custom_module`, that module too; with
    `secret_file`, a credential sent to the bench host and a rate limit it never reaches; with
    `signed`, AWS signing of its requests too (with BENCH_AWS_KEYS)."""
    text = f'allowed_domains: [{HOST}, "*.{HOST}"]\n'
    if custom_module is not None:
        text += f"rego_modules: [{custom_module}]\n"
    if secret_file is not None:
        text += f"credentials: [{{host: {HOST}, header: x-bench-key, file: {secret_file}}}]\n"
        text += f"rate_limits: [{{host: {HOST}, requests_per_minute: {MAX_PER_MINUTE}}}]\n"
    if signed:
        text += f"aws_signing: [{{host: {HOST}, service: s3, region: us-east-1}}]\n"
    return text


def redirect_rules(uid: int, port: int) -> str:
    """iptables-restore input sending `uid`'s HTTPS to a local transparent proxy on `port`.

    Only the client's UID: the proxy (another UID) must still reach the real upstream.
    """
    return (
        "*nat\n"
        ":PREROUTING ACCEPT [0:0]\n"
        ":INPUT ACCEPT [0:0]\n"
        ":OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n"
        f"-A OUTPUT -p tcp -m owner --uid-owner {uid} -m tcp --dport 443 "
        f"-j REDIRECT --to-ports {port}\n"
        "COMMIT\n"
    )


def envoy_only_bootstrap(
    *, port: int, admin_port: int, cert: Path, key: Path, upstream_ca: Path, minimal: bool = False
) -> dict[str, Any]:
    """Envoy intercepting TLS like ours (original destination, a certificate from a CA of the
    same kind, verified re-encryption with SNI and SAN from the Host) but judging nothing.
    `minimal`: the least interception can cost, one fixed upstream (the bench address, its
    name as SNI and SAN) and no original destination to recover."""
    tls = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
    filters = "type.googleapis.com/envoy.extensions.filters"
    listener_filters = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": f"{filters}.listener.tls_inspector.v3.TlsInspector"},
        }
    ]
    upstream_tls: dict[str, Any] = {
        "validation_context": {"trusted_ca": {"filename": str(upstream_ca)}}
    }
    if minimal:
        upstream_tls["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": HOST}}
        ]
        cluster: dict[str, Any] = {
            "type": "STATIC",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _address(HOST_IPV4, 443)}}]}
                ],
            },
        }
        protocol: dict[str, Any] = {}
        sni = {"sni": HOST}
    else:
        listener_filters.insert(
            0,
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": f"{filters}.listener.original_dst.v3.OriginalDst"},
            },
        )
        cluster = {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"}
        protocol = {
            "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True}
        }
        sni = {}
    return {
        "admin": {"address": _address("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "tls_in",
                    "address": _address("127.0.0.1", port),
                    "listener_filters": listener_filters,
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": f"{tls}.DownstreamTlsContext",
                                    "common_tls_context": {
                                        "alpn_protocols": ["h2", "http/1.1"],
                                        "tls_certificates": [
                                            {
                                                "certificate_chain": {"filename": str(cert)},
                                                "private_key": {"filename": str(key)},
                                            }
                                        ],
                                    },
                                },
                            },
                            "filters": [_http_connection_manager(filters)],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    **cluster,
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            **protocol,
                            "explicit_http_config": {"http_protocol_options": {}},
                        }
                    },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": f"{tls}.UpstreamTlsContext",
                            **sni,
                            "common_tls_context": upstream_tls,
                        },
                    },
                }
            ],
        },
    }


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _http_connection_manager(filters: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{filters}.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "tls_in",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": f"{filters}.http.router.v3.Router"},
                }
            ],
        },
    }


def squid_conf(
    *,
    port: int,
    state_dir: Path,
    ca_cert: Path,
    ca_key: Path,
    upstream_ca: Path,
    dns_servers: tuple[str, ...],
    explicit: bool = False,
) -> str:
    """Squid as a transparent ssl-bump proxy with the same allowlist, or (`explicit`) as the
    proxy its clients are told of, bumping their CONNECT tunnels.

    Peek at step 1 (an intercepted connection carries only an IP until the ClientHello is
    read), then bump: Squid mints a certificate per name with its helper, like ours.
    """
    listener = (
        f"http_port 127.0.0.1:{port} ssl-bump"
        if explicit
        else f"https_port 127.0.0.1:{port} intercept ssl-bump"
    )
    # An intercepting Squid needs a forward-proxy port as well, which its clients never use.
    forward = "" if explicit else f"http_port 127.0.0.1:{port + 1}\n"
    # The CONNECT Squid makes up for an intercepted connection names only the IP: the name is
    # judged on the bumped requests. A client's own CONNECT names the host: judged at once.
    connect = "http_access allow CONNECT bench_domains" if explicit else "http_access allow CONNECT"
    return f"""\
{listener} generate-host-certificates=on \
dynamic_cert_mem_cache_size=16MB tls-cert={ca_cert} tls-key={ca_key}
sslcrtd_program /usr/lib/squid/security_file_certgen -s {state_dir}/ssl_db -M 16MB
sslcrtd_children 8 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={upstream_ca}
acl bench_domains dstdomain .{HOST}  # the name and every subdomain
acl read_methods method GET HEAD
acl CONNECT method CONNECT
{connect}
http_access allow bench_domains read_methods
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_log {state_dir}/cache.log
cache_store_log none
pid_filename {state_dir}/squid.pid
coredump_dir {state_dir}
hosts_file /etc/hosts
dns_nameservers {" ".join(dns_servers)}
cache_effective_user proxy
# Else a `pinger` child outlives Squid.
pinger_enable off
{forward}icp_port 0
htcp_port 0
shutdown_lifetime 1 seconds
"""


def mitm_addon(rego: Path, data: Path) -> str:
    """A mitmproxy addon judging every request with our Rego and policy data through regorus,
    from an input document of the same shape as the agent's, and refusing with a 403 JSON
    body like ours. It runs in mitmproxy's own venv, so it imports nothing of ours."""
    return f'''\
"""Judge every request with intercept's Rego policy (generated by intercept bench)."""

import json

import regorus
from mitmproxy import http

ENGINE = regorus.Engine()
ENGINE.add_policy("intercept.rego", open({json.dumps(str(rego))}).read())
ENGINE.add_data(json.load(open({json.dumps(str(data))})))


def request(flow: http.HTTPFlow) -> None:
    req = flow.request
    authority = req.host_header or req.pretty_host
    headers = {{k.lower(): v for k, v in req.headers.items()}}
    headers.update({{":authority": authority, ":method": req.method, ":path": req.path}})
    ENGINE.set_input(
        {{
            "attributes": {{
                "request": {{
                    "http": {{
                        "method": req.method,
                        "host": authority,
                        "path": req.path,
                        "scheme": req.scheme,
                        "protocol": "HTTP/1.1",
                        "headers": headers,
                    }}
                }},
                "tlsSession": {{"sni": flow.client_conn.sni or ""}},
            }},
            "version": {{"encoding": "protojson", "ext_authz": "v3"}},
        }}
    )
    decision = ENGINE.eval_rule("data.intercept.decision")
    if not decision.get("allow"):
        body = {{"error": {{"code": "POLICY_BLOCKED", "rule": decision.get("rule"),
                           "reason": decision.get("reason")}}}}
        flow.response = http.Response.make(
            403, json.dumps(body), {{"content-type": "application/json"}}
        )
'''
