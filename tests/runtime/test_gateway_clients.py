"""`intercept gateway --client NAME=CIDR --policy-for NAME=FILE`: which policy serves whom."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from intercept_proxy.runtime.gateway import DEFAULT, GatewayError, Policy, dispatch_args, policies


def test_each_named_client_gets_its_policy_and_the_rest_the_default():
    got = policies(
        Path("all.yaml"),
        ["ci=10.1.0.0/16", "agents=10.2.0.0/16", "agents=fd00:2::/64"],
        ["ci=ci.yaml", "agents=agents.yaml"],
    )
    assert got == [
        Policy(DEFAULT, Path("all.yaml")),
        Policy("agents", Path("agents.yaml"), ("10.2.0.0/16", "fd00:2::/64")),
        Policy("ci", Path("ci.yaml"), ("10.1.0.0/16",)),
    ]
    assert policies(None, ["ci=10.1.0.0/16"], ["ci=ci.yaml"]) == [
        Policy("ci", Path("ci.yaml"), ("10.1.0.0/16",))
    ]


@pytest.mark.parametrize(
    ("clients", "policy_for", "message"),
    [
        ([], [], "no policy: give --policy"),
        (["ci"], ["ci=ci.yaml"], "--client ci: expected NAME=VALUE"),
        (["ci=10.1.0.1/16"], ["ci=ci.yaml"], "ci=10.1.0.1/16: '10.1.0.1/16' is not a CIDR"),
        (["ci=everyone"], ["ci=ci.yaml"], "is not a CIDR"),
        (["CI=10.1.0.0/16"], ["CI=ci.yaml"], "'CI' is not a client name"),
        (["default=10.1.0.0/16"], ["default=x.yaml"], "'default' is not a client name"),
        (["ci=10.1.0.0/16"], [], "--client ci: no --policy-for ci=FILE"),
        (["ci=10.1.0.0/16"], ["cd=cd.yaml"], "no --client cd=CIDR says who cd is"),
        (["ci=10.1.0.0/16"], ["ci=a.yaml", "ci=b.yaml"], "ci has a policy already"),
        (["ci=10.1.0.0/16"], ["ci="], "--policy-for ci=: expected NAME=VALUE"),
        (
            ["ci=10.1.0.0/16", "cd=10.1.0.0/16"],
            ["ci=a.yaml", "cd=b.yaml"],
            "--client cd=10.1.0.0/16: 10.1.0.0/16 is ci's already",
        ),
    ],
)
def test_what_cannot_be_served_is_named(clients, policy_for, message):
    with pytest.raises(GatewayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policies(None, clients, policy_for)


def test_the_dispatcher_sends_the_unnamed_to_the_default_else_to_a_gateway_that_refuses_them():
    with socket.socket() as listening, socket.socket() as a, socket.socket() as b:
        fds = (listening.fileno(), a.fileno(), b.fileno())
        ci = Policy("ci", Path("ci.yaml"), ("10.1.0.0/16", "fd00:1::/64"))
        assert dispatch_args([listening], [(Policy(DEFAULT, Path("p")), a), (ci, b)]) == [
            "dispatch", f"{fds[0]}", f"10.1.0.0/16={fds[2]}", f"fd00:1::/64={fds[2]}",
            f"*={fds[1]}",
        ]  # fmt: skip
        cd = Policy("cd", Path("cd.yaml"), ("10.2.0.0/16",))
        assert dispatch_args([listening], [(ci, a), (cd, b)])[-1] == f"*={fds[1]}"
