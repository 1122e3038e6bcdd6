"""The benchmark's generated configurations: golden files, and checks that each one is
accepted by what runs it and judges like our policy."""

import json
import subprocess
from pathlib import Path

import pytest

from intercept_proxy.bench import configs
from intercept_proxy.lab import LabSpec
from intercept_proxy.pki import CertificateAuthority
from intercept_proxy.policy.engine import RegorusEngine
from intercept_proxy.policy.input import http_input
from intercept_proxy.policy.model import load_policy, parse_policy
from intercept_proxy.xds.envoy import envoy_command
from tests.golden import assert_golden, assert_golden_text

FILES = Path("/run/bench")  # paths only appear in the output; nothing is read there


@pytest.mark.parametrize("explicit", [False, True])
def test_squid_conf(explicit):
    text = configs.squid_conf(
        port=15443,
        state_dir=FILES / "squid",
        ca_cert=FILES / "ca.pem",
        ca_key=FILES / "squid" / "ca.key",
        upstream_ca=FILES / "upstream-ca.pem",
        dns_servers=("198.18.0.53", "fd00::53"),
        explicit=explicit,
    )
    assert_golden_text(f"bench/squid{'-proxy' if explicit else ''}.conf", text)


@pytest.mark.parametrize("minimal", [False, True])
def test_envoy_bootstraps(minimal):
    bootstrap = configs.envoy_only_bootstrap(
        port=15443,
        admin_port=15000,
        cert=FILES / "leaf.pem",
        key=FILES / "leaf.key",
        upstream_ca=FILES / "upstream-ca.pem",
        minimal=minimal,
    )
    assert_golden(f"bench/envoy-{'minimal' if minimal else 'only'}.json", bootstrap)


@pytest.mark.parametrize("minimal", [False, True])
def test_envoy_bootstraps_are_valid_for_our_envoy(tmp_path, minimal):
    ca = CertificateAuthority.generate()
    leaf = ca.issue([configs.HOST])
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "leaf.key").write_bytes(leaf.key_pem)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    bootstrap = configs.envoy_only_bootstrap(
        port=15443,
        admin_port=15000,
        cert=tmp_path / "leaf.pem",
        key=tmp_path / "leaf.key",
        upstream_ca=tmp_path / "ca.pem",
        minimal=minimal,
    )
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        envoy_command(config, ["--mode", "validate", "-l", "error"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _nginx_conf(state_dir: Path, names: list[str], leaves_dir: Path) -> str:
    leaves = {n: (leaves_dir / f"{n}.pem", leaves_dir / f"{n}.key") for n in names}
    return configs.nginx_conf(
        state_dir=state_dir, leaves=leaves, body=state_dir / "body", download=state_dir / "download"
    )


def test_nginx_conf():
    text = _nginx_conf(FILES / "upstream", configs.bench_names(1), FILES / "certs")
    assert_golden_text("bench/nginx.conf", text)


def test_nginx_conf_is_valid_for_nginx(tmp_path):
    names = configs.bench_names(2)
    ca = CertificateAuthority.generate()
    for name in names:
        leaf = ca.issue([name])
        (tmp_path / f"{name}.pem").write_bytes(leaf.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(leaf.key_pem)
    conf = tmp_path / "nginx.conf"
    conf.write_text(_nginx_conf(tmp_path, names, tmp_path))
    # nginx -t binds its listeners: in a namespace of its own (gone with the process) that
    # holds the bench addresses.
    check = (
        f"ip link set lo up && ip addr add {configs.HOST_IPV4}/32 dev lo && "
        f"ip addr add {configs.HOST_IPV6}/128 dev lo && "
        f"nginx -t -p {tmp_path} -e {tmp_path}/error.log -c {conf}"
    )
    argv = ["unshare", "--net", "sh", "-c", check]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mitm_addon():
    text = configs.mitm_addon(FILES / "intercept.rego", FILES / "data.json")
    assert_golden_text("bench/mitm_addon.py.txt", text)
    compile(text, "addon.py", "exec")


def test_redirect_rules():
    assert_golden_text("bench/redirect.rules", configs.redirect_rules(12345, 15443))


def test_lab_spec_and_hosts_file():
    spec = LabSpec.from_dict(configs.lab_spec(3))
    assert [h.name for h in spec.hosts] == [
        "bench.test",
        "new0.bench.test",
        "new1.bench.test",
        "new2.bench.test",
    ]
    assert {(h.ipv4, h.ipv6) for h in spec.hosts} == {(configs.HOST_IPV4, configs.HOST_IPV6)}
    # nginx serves them all.
    assert all(h.external for h in spec.hosts)
    assert_golden_text("bench/hosts", configs.hosts_file(3))


def _decide(engine: RegorusEngine, method: str, host: str) -> bool:
    doc = http_input(method=method, host=host, path="/", scheme="https", headers={}, sni=host)
    return engine.evaluate(doc).allow


@pytest.mark.parametrize("custom", [False, True])
def test_policy_grants_reads_on_bench_names_only(tmp_path, custom):
    """The allowlist every scenario enforces (Squid's and the addon's are the same by
    construction: same names, same methods)."""
    module = None
    if custom:
        (tmp_path / "custom.rego").write_text(configs.CUSTOM_REGO)
        module = "custom.rego"
    path = tmp_path / "policy.yaml"
    path.write_text(configs.policy_yaml(module))
    engine = RegorusEngine(load_policy(path))
    assert _decide(engine, "GET", "bench.test")
    assert _decide(engine, "HEAD", configs.new_host(7))
    assert not _decide(engine, "POST", "bench.test")
    assert not _decide(engine, "GET", "other.test")
    # The custom module grants a name no benchmark request uses.
    assert _decide(engine, "GET", "never.invalid") is custom


def test_policy_without_module_is_plain():
    assert parse_policy(configs.policy_yaml()).rego_modules == ()
