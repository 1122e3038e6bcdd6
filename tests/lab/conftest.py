"""Fixtures for lab tests: one session prefix for every namespace, state dir and CLI lab, and a
finalizer that removes whatever carries it, however the tests ended."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_proxy import netns
from intercept_proxy.lab import Lab, LabSpec
from intercept_proxy.lab.cli import STATE_ROOT
from intercept_proxy.lab.control import DEFAULT_STATE_PARENT

NSCLIENT = Path(__file__).with_name("nsclient.py")

SPEC = {
    "hosts": [
        {"name": "api.github.com"},
        {"name": "console.anthropic.com", "ipv4": "198.18.1.10", "ipv6": "fd00::10"},
        {"name": "github.com", "git_repos": ["octo/hello"]},
        {"name": "a.shared.test", "ipv4": "198.18.2.1", "ipv6": "fd00::2:1"},
        {"name": "b.shared.test", "ipv4": "198.18.2.1", "ipv6": "fd00::2:1"},
    ]
}


def leftovers(prefix):
    """Everything on this machine carrying `prefix`: namespaces, links, state dirs, processes."""
    found = [f"netns {n}" for n in netns.namespaces() if n.startswith(prefix)]
    found += [f"link {n}" for n in netns.links() if n.startswith(prefix)]
    for parent, pattern in (
        (DEFAULT_STATE_PARENT, f"intercept-lab-{prefix}*"),
        (STATE_ROOT, f"{prefix}*"),
    ):
        found += [f"dir {p}" for p in parent.glob(pattern)]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "intercept_proxy.lab.server" in cmdline and prefix in cmdline:
            found.append(f"process {proc.name}: {cmdline}")
    return found


@pytest.fixture(scope="session")
def prefix(netns_prefix):
    """The prefix of every name this session creates (7 characters: a lab prefix may add 2), with
    the labs' state directories, which only these tests leave behind."""
    session_prefix = netns_prefix
    yield session_prefix
    for name in (p.name for p in STATE_ROOT.glob(f"{session_prefix}*")):
        subprocess.run(
            [sys.executable, "-m", "intercept_proxy", "lab", "down", "--name", name], check=False
        )
    for parent, pattern in (
        (DEFAULT_STATE_PARENT, f"intercept-lab-{session_prefix}*"),
        (STATE_ROOT, f"{session_prefix}*"),
    ):
        for path in parent.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def lab(prefix, tmp_path_factory):
    log = tmp_path_factory.mktemp("lab") / "receipts.jsonl"
    with Lab(LabSpec.from_dict(SPEC), prefix=f"{prefix}m", log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def make_netns(prefix):
    """make_netns(suffix): a fresh namespace `{prefix}{suffix}`, deleted at the end."""
    created = []

    def make(suffix):
        name = f"{prefix}{suffix}"
        netns.create(name)
        created.append(name)
        return name

    yield make
    for name in created:
        netns.delete(name)


@pytest.fixture(scope="session")
def client(lab, make_netns):
    """A namespace attached to the session lab, resolving names through the lab's DNS."""
    name = make_netns("c1")
    netns.set_nameservers(name, lab.dns_servers)
    lab.connect(name)
    return name


class NsTools:
    """Run things inside namespaces (a fixture, so test modules need not import conftest)."""

    def __init__(self, lab):
        self.lab = lab

    def run(self, name, *argv, env=None, timeout=30, check=True):
        result = subprocess.run(
            netns.exec_argv(name, argv),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{argv} failed ({result.returncode}): {result.stderr}"
        return result

    def client(self, name, *jobs):
        """Run nsclient.py jobs inside `name`; their results in order."""
        return json.loads(self.run(name, sys.executable, str(NSCLIENT), json.dumps(jobs)).stdout)

    def curl(self, name, url, *args, resolve=None):
        """curl output inside `name`, trusting the lab CA; `resolve` (host:port:addr) skips DNS."""
        argv = ["curl", "-sS", "--fail", "--max-time", "10", "--cacert", str(self.lab.ca_cert_path)]
        if resolve:
            argv += ["--resolve", resolve]
        return self.run(name, *argv, *args, url).stdout


@pytest.fixture(scope="session")
def tools(lab):
    return NsTools(lab)


@pytest.fixture(scope="session")
def find_leftovers():
    return leftovers
