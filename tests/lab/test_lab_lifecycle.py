"""Start, stop and failure paths: nothing of a lab survives it, and `intercept lab` drives one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_proxy import netns
from intercept_proxy.cli import main
from intercept_proxy.lab import Lab, LabError, LabSpec, control
from intercept_proxy.lab.cli import STATE_ROOT

pytestmark = pytest.mark.netns

SMALL = LabSpec.from_dict({"hosts": [{"name": "small.test"}]})


def alive(pid):
    """Whether `pid` still runs (a zombie waiting for init to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_gone(lab, find_leftovers, pid=None):
    """No namespace, state dir or server process (found by its config path) of `lab` left."""
    assert not netns.exists(lab.netns)
    assert not lab.state_dir.exists()
    assert pid is None or not alive(pid)
    assert find_leftovers(lab.prefix) == []


def test_stop_leaves_nothing_and_can_run_twice(prefix, make_netns, find_leftovers):
    attached = make_netns("n1")
    lab = Lab(SMALL, prefix=f"{prefix}s").start()
    link = lab.connect(attached)
    pid = lab.pid
    assert netns.exists(lab.netns)
    assert link.peer_ifname in netns.links(attached)
    assert pid in netns.pids(lab.netns)
    lab.stop()
    assert_gone(lab, find_leftovers, pid)
    assert netns.links(attached) == ["lo"]  # the attached namespace is the caller's: it stays
    lab.stop()


def test_an_exception_in_the_with_block_still_stops_the_lab(prefix, find_leftovers):
    with pytest.raises(RuntimeError, match="boom"), Lab(SMALL, prefix=f"{prefix}e") as lab:
        pid = lab.pid
        raise RuntimeError("boom")
    assert_gone(lab, find_leftovers, pid)


def test_a_server_that_fails_to_start_is_reported_and_cleaned_up(
    prefix, monkeypatch, find_leftovers
):
    real = control.write_lab_pki

    def broken_key(hosts, ca_cert_path, leaf_dir):
        pki = real(hosts, ca_cert_path, leaf_dir)
        pki.leaves["small.test"][1].write_text("not a key\n")
        return pki

    monkeypatch.setattr(control, "write_lab_pki", broken_key)
    lab = Lab(SMALL, prefix=f"{prefix}f")
    with pytest.raises(LabError) as failure:
        lab.start()
    message = str(failure.value)
    assert "lab server exited before it was ready (exit status 1)" in message
    assert "ssl.SSLError: [SSL] PEM lib" in message  # its stderr, verbatim
    assert_gone(lab, find_leftovers)


def test_start_refuses_a_namespace_it_does_not_own_and_leaves_it_alone(prefix, find_leftovers):
    lab = Lab(SMALL, prefix=f"{prefix}x")
    netns.create(lab.netns)
    try:
        with pytest.raises(LabError, match="already exists"):
            lab.start()
        assert netns.exists(lab.netns)
        assert not lab.state_dir.exists()
    finally:
        netns.delete(lab.netns)
    assert find_leftovers(lab.prefix) == []


def test_prefix_is_checked():
    with pytest.raises(LabError, match="prefix"):
        Lab(SMALL, prefix="much-too-long-prefix")


def intercept(*args):
    return subprocess.run(
        [sys.executable, "-m", "intercept_proxy", "lab", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_up_status_down(prefix, make_netns, tmp_path, find_leftovers):
    spec = tmp_path / "spec.yaml"
    spec.write_text("hosts:\n  - name: cli.test\n    ipv4: 198.18.7.7\n")
    log = tmp_path / "receipts.jsonl"
    name = f"{prefix}-cli"
    up = intercept(
        "up", "--spec", str(spec), "--name", name, "--prefix", f"{prefix}u", "--log", str(log)
    )
    assert up.returncode == 0, up.stderr
    summary = json.loads(up.stdout)
    assert summary["name"] == name
    assert summary["hosts"] == [
        {
            "name": "cli.test",
            "ipv4": "198.18.7.7",
            "ipv6": "fd00::1:1",
            "git_repos": [],
            "external": False,
        }
    ]
    assert summary["dns_servers"] == ["198.18.0.53", "fd00::53"]
    assert summary["ca_cert"] == str(STATE_ROOT / name / "ca.pem")
    assert summary["log"] == str(log)
    assert (STATE_ROOT / name / "server.pid").read_text().strip() == str(summary["pid"])

    again = intercept("up", "--spec", str(spec), "--name", name)
    assert again.returncode != 0 and "already up" in again.stderr

    status = intercept("status", "--name", name)
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True

    # The server outlived the command; another process can attach a namespace to it.
    attached = make_netns("n2")
    Lab.from_state(STATE_ROOT / name).connect(attached)
    out = subprocess.run(
        netns.exec_argv(
            attached,
            [
                "curl",
                "-sS",
                "--cacert",
                summary["ca_cert"],
                "--resolve",
                "cli.test:443:198.18.7.7",
                "https://cli.test/p",
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["server"] == "cli.test"

    down = intercept("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not (STATE_ROOT / name).exists()
    assert not netns.exists(summary["netns"])
    assert not alive(summary["pid"])
    assert find_leftovers(f"{prefix}u") == []
    assert log.exists()  # a log the user named is theirs to keep

    assert intercept("status", "--name", name).returncode == 1
    gone = intercept("down", "--name", name)
    assert gone.returncode == 1 and "not up" in gone.stderr


def test_cli_up_reports_a_bad_spec(tmp_path, prefix):
    spec = tmp_path / "bad.yaml"
    spec.write_text("hosts:\n  - name: ok.test\n  - name: x.test\n    ipv4: 10.0.0.1\n")
    result = intercept("up", "--spec", str(spec), "--name", f"{prefix}-bad")
    assert result.returncode != 0
    assert (
        f"{spec}: hosts[1].ipv4: 10.0.0.1 is outside the lab range 198.18.0.0/15" in result.stderr
    )
    assert not (STATE_ROOT / f"{prefix}-bad").exists()


@pytest.mark.parametrize("sub", ["up", "down", "status"])
def test_cli_help_for_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["lab", sub, "--help"])
    assert exit_.value.code == 0
    assert f"usage: intercept lab {sub}" in capsys.readouterr().out
