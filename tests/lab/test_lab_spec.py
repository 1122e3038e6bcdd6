"""Pure parts of the lab: spec validation, the address plan, and the server's decisions."""

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from intercept_proxy.lab import LabHost, LabSpec, LabSpecError
from intercept_proxy.lab.addresses import (
    AddressError,
    AddressRequest,
    assign_addresses,
    link_addresses,
)
from intercept_proxy.lab.config import ServedHost, ServerConfig
from intercept_proxy.lab.server.dns import answer
from intercept_proxy.lab.server.git import match_repo
from intercept_proxy.lab.server.http import host_header_name
from intercept_proxy.lab.server.site import Site


def hosts(*entries):
    return {"hosts": list(entries)}


BAD_SPECS = [
    (
        hosts({"name": "a.test", "external": "yes"}),
        "hosts[0].external: expected true or false, got str",
    ),
    (
        hosts(
            {"name": "a.test", "ipv4": "198.18.1.1"},
            {"name": "b.test", "ipv4": "198.18.1.1", "external": True},
        ),
        "hosts[1].external: 198.18.1.1 is also hosts[0]'s, which the lab serves",
    ),
    (
        hosts({"name": "a.test", "external": True, "git_repos": ["a/b"]}),
        "hosts[0].git_repos: an external host serves none",
    ),
    ([], "<inline>: expected a mapping with 'hosts', got list"),
    ({}, "<inline>: hosts: expected a non-empty list, got nothing"),
    (hosts(), "<inline>: hosts: expected a non-empty list, got list"),
    (
        {"hosts": [{"name": "a.test"}], "ports": [1]},
        "<inline>: ports: unknown key (allowed: hosts)",
    ),
    (hosts("a.test"), "hosts[0]: expected a mapping with 'name', got str"),
    (hosts({"ipv4": "198.18.1.1"}), "hosts[0].name: missing (every host needs a name)"),
    (hosts({"name": 5}), "hosts[0].name: expected a string, got int"),
    (
        hosts({"name": "a.test"}, {"name": "-a.test"}),
        "hosts[1].name: '-a.test' has an invalid label '-a'",
    ),
    (hosts({"name": "198.18.1.1"}), "hosts[0].name: '198.18.1.1' is an IP address literal"),
    (hosts({"name": "fd00::1"}), "hosts[0].name: 'fd00::1' is an IP address literal"),
    (hosts({"name": "bücher.test"}), "hosts[0].name: 'bücher.test' is not ASCII"),
    (
        hosts({"name": "a.test", "port": 443}),
        "hosts[0].port: unknown key (allowed: external, git_repos, ipv4, ipv6, name)",
    ),
    (hosts({"name": "a.test"}, {"name": "A.Test."}), "hosts[1].name: 'a.test' is already hosts[0]"),
    (hosts({"name": "a.test", "ipv4": 3323068673}), "hosts[0].ipv4: expected a string, got int"),
    (hosts({"name": "a.test", "ipv4": "a.b"}), "hosts[0].ipv4: 'a.b' is not an IP address"),
    (
        hosts({"name": "a.test", "ipv4": "198.18.01.1"}),
        "hosts[0].ipv4: '198.18.01.1' is not an IP address",
    ),
    (
        hosts({"name": "a.test", "ipv4": "fd00::1"}),
        "hosts[0].ipv4: 'fd00::1' is not an IPv4 address",
    ),
    (
        hosts({"name": "a.test"}, {"name": "b.test"}, {"name": "c.test", "ipv4": "10.0.0.1"}),
        "hosts[2].ipv4: 10.0.0.1 is outside the lab range 198.18.0.0/15",
    ),
    (
        hosts({"name": "a.test", "ipv4": "198.18.0.53"}),
        "hosts[0].ipv4: 198.18.0.53 is inside 198.18.0.0/24, which the lab reserves for itself",
    ),
    (
        hosts({"name": "a.test", "ipv4": "198.19.3.4"}),
        "hosts[0].ipv4: 198.19.3.4 is inside 198.19.0.0/16, which the lab reserves for itself",
    ),
    (
        hosts({"name": "a.test", "ipv6": "198.18.1.1"}),
        "hosts[0].ipv6: '198.18.1.1' is not an IPv6 address",
    ),
    (
        hosts({"name": "a.test", "ipv6": "2001:db8::1"}),
        "hosts[0].ipv6: 2001:db8::1 is outside the lab range fd00::/8",
    ),
    (
        hosts({"name": "a.test", "ipv6": "FD00::53"}),
        "hosts[0].ipv6: fd00::53 is inside fd00::53/128, which the lab reserves for itself",
    ),
    (
        hosts({"name": "a.test", "ipv6": "fdff::7"}),
        "hosts[0].ipv6: fdff::7 is inside fdff::/16, which the lab reserves for itself",
    ),
    (
        hosts({"name": "a.test", "git_repos": "octo/hello"}),
        "hosts[0].git_repos: expected a list of 'owner/repo', got str",
    ),
    (
        hosts({"name": "a.test", "git_repos": [7]}),
        "hosts[0].git_repos[0]: expected a string, got int",
    ),
    (
        hosts({"name": "a.test", "git_repos": ["a/b", "octo"]}),
        "hosts[0].git_repos[1]: 'octo' is not of the form 'owner/repo'",
    ),
    (
        hosts({"name": "a.test", "git_repos": ["a/b/c"]}),
        "hosts[0].git_repos[0]: 'a/b/c' is not of the form 'owner/repo'",
    ),
    (
        hosts({"name": "a.test", "git_repos": ["../etc"]}),
        "hosts[0].git_repos[0]: '../etc' is not of the form 'owner/repo'",
    ),
    (
        hosts({"name": "a.test", "git_repos": ["octo/hello.git"]}),
        "hosts[0].git_repos[0]: 'octo/hello.git': leave out the '.git' suffix",
    ),
    (
        hosts({"name": "a.test", "git_repos": ["a/b", "a/b"]}),
        "hosts[0].git_repos[1]: 'a/b' is listed twice",
    ),
    (
        hosts(*({"name": f"h{i}.test"} for i in range(255))),
        "<inline>: hosts: no free address left in 198.18.1.0/24; give hosts explicit ones",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_SPECS)
def test_bad_specs_are_rejected_naming_the_key(data, message):
    with pytest.raises(LabSpecError) as error:
        LabSpec.from_dict(data)
    assert message in str(error.value)


def test_the_error_names_its_source():
    with pytest.raises(LabSpecError, match=r"^spec\.yaml: hosts\[0\]\.ipv4: "):
        LabSpec.from_dict(hosts({"name": "a.test", "ipv4": "1.1.1.1"}), source="spec.yaml")


def test_addresses_are_assigned_around_the_given_ones():
    spec = LabSpec.from_dict(
        hosts(
            {"name": "API.Example.TEST."},
            {"name": "given.test", "ipv4": "198.18.1.2", "ipv6": "FD00:0::1:1"},
            {"name": "auto.test", "git_repos": ["octo/hello", "octo/world"]},
            {"name": "half.test", "ipv6": "fd00::99"},
        )
    )
    assert spec.hosts == (
        LabHost("api.example.test", "198.18.1.1", "fd00::1:2"),
        LabHost("given.test", "198.18.1.2", "fd00::1:1"),
        LabHost("auto.test", "198.18.1.3", "fd00::1:3", ("octo/hello", "octo/world")),
        LabHost("half.test", "198.18.1.4", "fd00::99"),
    )


def test_two_names_may_share_an_address():
    shared = {"ipv4": "198.18.9.9", "ipv6": "fd00::9"}
    spec = LabSpec.from_dict(hosts({"name": "a.test", **shared}, {"name": "b.test", **shared}))
    assert [(h.ipv4, h.ipv6) for h in spec.hosts] == [("198.18.9.9", "fd00::9")] * 2


def test_assign_addresses_is_pure_and_ordered():
    requests = [
        AddressRequest(None, None),
        AddressRequest("198.18.1.1", None),
        AddressRequest(None, None),
    ]
    assert assign_addresses(requests) == [
        ("198.18.1.2", "fd00::1:1"),
        ("198.18.1.1", "fd00::1:2"),
        ("198.18.1.3", "fd00::1:3"),
    ]
    assert assign_addresses(requests) == assign_addresses(requests)


def test_load_reads_yaml_and_round_trips(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(
        "hosts:\n"
        "  - {name: api.github.com}\n"
        "  - {name: console.anthropic.com, ipv4: 198.18.1.10, ipv6: fd00::10}\n"
        "  - {name: github.com, git_repos: [octo/hello]}\n"
        "  - {name: bench.test, external: true}\n"
    )
    spec = LabSpec.load(path)
    assert spec.source == str(path)
    assert [(h.name, h.ipv4, h.ipv6) for h in spec.hosts] == [
        ("api.github.com", "198.18.1.1", "fd00::1:1"),
        ("console.anthropic.com", "198.18.1.10", "fd00::10"),
        ("github.com", "198.18.1.2", "fd00::1:2"),
        ("bench.test", "198.18.1.3", "fd00::1:3"),
    ]
    assert [h.external for h in spec.hosts] == [False, False, False, True]
    assert LabSpec.from_dict(spec.to_dict()).hosts == spec.hosts


def test_the_lab_server_leaves_external_hosts_addresses_alone():
    spec = LabSpec.from_dict(hosts({"name": "a.test"}, {"name": "b.test", "external": True}))
    served = tuple(ServedHost(h, Path(f"{h.name}.pem"), Path(f"{h.name}.key")) for h in spec.hosts)
    config = ServerConfig(served, ("198.18.0.53",), Path("log"), Path("repos"))
    assert {a: [s.host.name for s in on] for a, on in config.addresses().items()} == {
        "198.18.1.1": ["a.test"],
        "fd00::1:1": ["a.test"],
    }
    assert ServerConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read the spec: No such file or directory"), ("hosts: [", "invalid YAML")],
)
def test_load_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "lab.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(LabSpecError, match=f"^{path}: {message}"):
        LabSpec.load(path)


def test_link_addresses():
    first, second, last = link_addresses(0), link_addresses(1), link_addresses(32767)
    assert (first.lab_ipv4, first.peer_ipv4, first.lab_ipv6, first.peer_ipv6) == (
        "198.19.0.0",
        "198.19.0.1",
        "fdff::1",
        "fdff::2",
    )
    assert (second.lab_ipv4, second.peer_ipv4, second.lab_ipv6) == (
        "198.19.0.2",
        "198.19.0.3",
        "fdff:0:0:1::1",
    )
    assert (last.peer_ipv4, last.peer_ipv6) == ("198.19.255.255", "fdff:0:0:7fff::2")
    with pytest.raises(AddressError):
        link_addresses(32768)


def served(name, ipv4="198.18.1.1", ipv6="fd00::1"):
    return ServedHost(LabHost(name, ipv4, ipv6), Path("/c"), Path("/k"))


def test_site_picks_a_host_of_its_own_address_or_its_first():
    site = Site("198.18.1.1", (served("a.test"), served("b.test")))
    assert site.pick("B.Test.").host.name == "b.test"
    assert site.pick("other.test").host.name == "a.test"
    assert site.pick(None).host.name == "a.test"
    assert site.sole_host is None
    assert Site("198.18.1.1", (served("a.test"),)).sole_host == "a.test"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("a.test", "a.test"),
        ("a.test:8080", "a.test"),
        ("[fd00::1]:80", None),
        ("fd00::1", "fd00::1"),
        (None, None),
    ],
)
def test_host_header_name(header, name):
    assert host_header_name(header) == name


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/octo/hello.git/info/refs", ("octo/hello", "/info/refs")),
        ("/octo/hello/git-upload-pack", ("octo/hello", "/git-upload-pack")),
        ("/octo/hello.world.git/HEAD", ("octo/hello.world", "/HEAD")),
        ("/octo/hello", None),
        ("/octo/other.git/info/refs", None),
        ("/x/octo/hello/info/refs", None),
    ],
)
def test_match_repo(path, found):
    assert match_repo(path, ("octo/hello", "octo/hello.world")) == found


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "answers"),
    [
        ("a.test", "A", "NOERROR", ["198.18.1.1"]),
        ("A.TEST.", "AAAA", "NOERROR", ["fd00::1"]),
        ("a.test", "TXT", "NOERROR", []),
        ("b.a.test", "A", "NXDOMAIN", []),
        ("example.com", "AAAA", "NXDOMAIN", []),
    ],
)
def test_dns_answer(name, qtype, rcode, answers):
    query = DNSRecord.question(name, qtype)
    reply = DNSRecord.parse(
        answer(query, {"a.test": LabHost("a.test", "198.18.1.1", "fd00::1")}).pack()
    )
    assert reply.header.id == query.header.id
    assert RCODE.get(reply.header.rcode) == rcode
    assert [str(rr.rdata) for rr in reply.rr] == answers
    assert all(QTYPE.get(rr.rtype) == qtype for rr in reply.rr)
