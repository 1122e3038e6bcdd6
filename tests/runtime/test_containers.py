"""How a container of a Pod spec becomes a local process: images, commands, identities."""

from __future__ import annotations

from pathlib import Path

import pytest

from intercept_proxy.runtime.containers import (
    ContainerError,
    Executables,
    container_env,
    expand,
    identity,
    local_argv,
    setpriv_argv,
)

EXE = Executables(intercept=Path("/opt/venv/bin/intercept"), envoy=Path("/opt/envoy"))


@pytest.mark.parametrize(
    ("image", "command", "expected"),
    [
        (
            "intercept-proxy/intercept-proxy:0.1.0",
            ["intercept", "agent"],
            "/opt/venv/bin/intercept",
        ),
        (
            "registry.example/intercept-proxy/intercept-proxy@sha256:ab",
            ["intercept"],
            "/opt/venv/bin/intercept",
        ),
        ("envoyproxy/envoy:v1.40.0", ["envoy", "-c", "x"], "/opt/envoy"),
        ("python:3.12", ["python3", "-c", "1"], "python3"),
        # Only the image's own program is mapped, never a look-alike name in another image.
        ("busybox:1.36", ["envoy"], "envoy"),
    ],
)
def test_images_are_mapped_not_pulled(image, command, expected):
    argv = local_argv({"name": "c", "image": image, "command": command}, {}, EXE)
    assert argv[0] == expected
    assert argv[1:] == command[1:]


def test_a_container_without_command_is_refused():
    with pytest.raises(ContainerError, match="images are not pulled"):
        local_argv({"name": "c", "image": "python:3.12"}, {}, EXE)


def test_kubernetes_variable_expansion():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"
    container = {"name": "c", "command": ["echo", "$(A)"], "args": ["$(B)"], "image": "x:1"}
    assert local_argv(container, env, EXE) == ["echo", "1", "two"]


def test_env_with_downward_fields():
    pod = {"metadata": {"name": "p1", "namespace": "ns"}}
    container = {
        "name": "c",
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)y"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    assert container_env(container, pod) == {"A": "x", "B": "xy", "POD": "p1"}


def test_env_from_a_secret_key():
    objects = {("Secret", "s"): {"K": b"value"}}
    container = {
        "name": "c",
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "K"}}},
            {
                "name": "B",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "X", "optional": True}},
            },
        ],
    }
    assert container_env(container, {}, lambda k, n: objects.get((k, n))) == {"A": "value"}
    missing = {
        "name": "c",
        "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "t", "key": "K"}}}],
    }
    with pytest.raises(ContainerError, match="env A: Secret 't' has no 'K'"):
        container_env(missing, {}, lambda k, n: objects.get((k, n)))


def test_env_from_a_whole_secret():
    objects = {("Secret", "s"): {"K": b"value", "not-a-name!": b"x", "L": b"other"}}
    container = {
        "name": "c",
        "envFrom": [{"secretRef": {"name": "s"}}, {"secretRef": {"name": "t", "optional": True}}],
        "env": [{"name": "L", "value": "mine"}],  # env wins over envFrom
    }
    env = container_env(container, {}, lambda k, n: objects.get((k, n)))
    assert env == {"K": "value", "L": "mine"}
    with pytest.raises(ContainerError, match="envFrom: Secret 't' not found"):
        container_env({"name": "c", "envFrom": [{"secretRef": {"name": "t"}}]}, {})
    with pytest.raises(ContainerError, match="envFrom: only secretRef"):
        container_env({"name": "c", "envFrom": [{"configMapRef": {"name": "t"}}]}, {})


def test_identity_merges_pod_and_container_contexts():
    spec = {"securityContext": {"runAsUser": 1000, "fsGroup": 2000, "supplementalGroups": [3000]}}
    who = identity({"name": "c", "securityContext": {"runAsGroup": 1001}}, spec, trusted=False)
    assert (who.uid, who.gid, who.groups, who.capabilities) == (1000, 1001, (2000, 3000), ())


def test_a_trusted_root_container_gets_what_it_asks_for():
    proxy_init = {
        "name": "proxy-init",
        "securityContext": {
            "runAsUser": 0,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    who = identity(proxy_init, {}, trusted=True)
    assert who.capabilities == ("NET_ADMIN", "NET_RAW")
    assert who.no_new_privileges and who.seccomp
    argv = setpriv_argv(who)
    assert "--bounding-set=-all,+net_admin,+net_raw" in argv
    assert not any(a.startswith("--ambient-caps") for a in argv)


def test_a_workload_never_gains_privileges_and_is_always_filtered():
    """Whatever its manifest leaves out: no_new_privs and the seccomp filter are not optional."""
    plain = identity({"name": "c", "securityContext": {"runAsUser": 1000}}, {}, trusted=False)
    assert plain.capabilities == () and plain.no_new_privileges and plain.seccomp
    assert "--bounding-set=-all" in setpriv_argv(plain)
    added = identity(
        {
            "name": "c",
            "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_BIND_SERVICE"]}},
        },
        {},
        trusted=False,
    )
    assert added.capabilities == ("NET_BIND_SERVICE",)
    assert "--ambient-caps=+net_bind_service" in setpriv_argv(added)


def test_intercept_run_commands_reach_the_process_verbatim():
    from intercept_proxy.runtime.cli import command_pod

    argv = ["sh", "-c", "echo $$ $(id -u) $HOME $$(x)"]
    container = command_pod(argv, 12345)["spec"]["containers"][0]
    assert local_argv(container, {"HOME": "/h"}, EXE) == argv
