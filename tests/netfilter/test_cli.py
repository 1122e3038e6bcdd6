"""`intercept proxy-init`, through its own `register` (the top-level `intercept` adds it)."""

import argparse
import re
import sys

import pytest

from intercept_proxy import netns
from intercept_proxy.netfilter import CaptureConfig, cli, render, save, verify
from tests.netfilter.conftest import run_in
from tests.netfilter.podnet import WORKLOAD_UID

# The same thing as a program, for runs inside a namespace or under another UID.
PROGRAM = (
    "import argparse, sys\n"
    "from intercept_proxy.netfilter import cli\n"
    "parser = argparse.ArgumentParser(prog='intercept')\n"
    "cli.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def proxy_init(*argv):
    parser = argparse.ArgumentParser(prog="intercept")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["proxy-init", *argv])
    return args.func(args)


def proxy_init_in(name, *argv, uid=0):
    """Run the command inside namespace `name` (its current one), as `uid`."""
    command = [sys.executable, "-c", PROGRAM, "proxy-init", *argv]
    if uid:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return netns.run(name, command)


def test_dry_run_prints_both_families_with_a_header_per_table(capsys):
    assert proxy_init("--dry-run") == 0
    out = capsys.readouterr().out
    rules = render(CaptureConfig())
    assert out == f"{rules.ipv4}\n{rules.ipv6}\n"
    headers = [line.split(":")[0] for line in out.splitlines() if line.startswith("# ")]
    assert headers == [
        f"# intercept proxy-init, {family} {table}"
        for family in ("ipv4", "ipv6")
        for table in ("nat", "filter")
    ]


def test_options_set_the_configuration(capsys):
    argv = [
        "--tls-port",
        "8443",
        "--tls-port",
        "443",
        "--http-port",
        "8080",
        "--envoy-uid",
        "1337",
        "--agent-uid",
        "1338",
        "--allow-cidr",
        "fd00::/64",
        "--allow-cidr",
        "10.96.0.0/12",
        "--dry-run",
    ]
    assert proxy_init(*argv) == 0
    rules = render(
        CaptureConfig(
            tls_ports=(443, 8443),
            http_ports=(8080,),
            envoy_uid=1337,
            agent_uid=1338,
            allowed_cidrs=("10.96.0.0/12", "fd00::/64"),
        )
    )
    assert capsys.readouterr().out == f"{rules.ipv4}\n{rules.ipv6}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-port", "15001"], "--tls-port: 15001 is in the sidecar range 15000-15099"),
        (["--http-port", "443"], "--http-port: 443 is also in tls_ports"),
        (["--agent-uid", "101"], "--agent-uid: must differ from envoy_uid (101)"),
        (["--envoy-uid", "0"], "--envoy-uid: 0 is outside 1-2147483647"),
        (["--allow-cidr", "10.0.0.1/8"], "--allow-cidr: '10.0.0.1/8' is not a CIDR"),
    ],
)
def test_invalid_options_are_named(argv, message):
    with pytest.raises(SystemExit, match=f"^intercept proxy-init: {re.escape(message)}"):
        proxy_init(*argv, "--dry-run")


def test_a_missing_iptables_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match=r"^intercept proxy-init: iptables-save not found"):
        proxy_init("--verify")


@pytest.mark.netns
def test_apply_logs_the_rules_then_verify_checks_them(fresh_netns, capsys):
    rules = render(CaptureConfig())
    assert proxy_init("--netns", fresh_netns) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{rules.ipv4}\n{rules.ipv6}\n"
        "intercept proxy-init: rules applied and verified (ipv4, ipv6: nat, filter)\n"
    )
    assert verify(rules, fresh_netns) == []

    assert proxy_init("--netns", fresh_netns, "--verify") == 0
    assert (
        capsys.readouterr().out
        == "intercept proxy-init: rules verified (ipv4, ipv6: nat, filter)\n"
    )

    run_in(fresh_netns, "ip6tables", "-D", "INTERCEPT_OUTPUT", "1")
    assert proxy_init("--netns", fresh_netns, "--verify") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "intercept proxy-init: the rules in force differ from the intended ones:\n"
        "  ipv6 filter: missing: -A INTERCEPT_OUTPUT -d fe80::/10 -p tcp -m owner"
        " --uid-owner 101 -m conntrack --ctstate NEW -m comment"
        " --comment 'envoy: no link-local or metadata'"
        " -j REJECT --reject-with tcp-reset\n"
    )
    # Verifying other options than those applied is a difference too.
    assert proxy_init("--netns", fresh_netns, "--verify", "--tls-port", "8443") == 1


@pytest.mark.netns
def test_runs_in_the_current_namespace(fresh_netns):
    result = proxy_init_in(fresh_netns, "--allow-cidr", "10.96.0.0/12")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("rules applied and verified (ipv4, ipv6: nat, filter)\n")
    assert verify(render(CaptureConfig(allowed_cidrs=("10.96.0.0/12",))), fresh_netns) == []


@pytest.mark.netns
def test_without_privileges_the_error_says_what_is_needed(fresh_netns):
    result = proxy_init_in(fresh_netns, uid=WORKLOAD_UID)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "intercept proxy-init: iptables-restore: not allowed: proxy-init needs root or "
        "CAP_NET_ADMIN in the network namespace ("
    )
    assert "INTERCEPT" not in save(fresh_netns).ipv4
