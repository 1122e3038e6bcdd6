"""Pod volumes laid out as the kubelet lays them out."""

from __future__ import annotations

import base64
import stat

import pytest

from intercept_proxy.runtime.volumes import PodVolumes, VolumeError

POD = {
    "metadata": {"name": "p", "labels": {"app": "a", "tier": "b"}, "annotations": {"x/y": "1"}},
    "spec": {
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {
                "name": "picked",
                "configMap": {
                    "name": "app-config",
                    "items": [{"key": "a.yaml", "path": "renamed.yaml"}],
                },
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "podinfo",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {"path": "xy", "fieldRef": {"fieldPath": "metadata.annotations['x/y']"}},
                    ]
                },
            },
        ]
    },
}
OBJECTS = {
    ("ConfigMap", "app-config"): {"data": {"a.yaml": "a: 1\n", "b.txt": "b"}},
    ("Secret", "creds"): {"data": {"token": base64.b64encode(b"s3cret").decode()}},
}


@pytest.fixture
def volumes(tmp_path):
    v = PodVolumes(tmp_path / "volumes", POD, OBJECTS)
    v.create()
    return v


def test_layout(volumes):
    assert stat.S_IMODE(volumes.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(volumes.path("scratch").stat().st_mode) == 0o777
    cfg = volumes.path("cfg")
    assert (cfg / "a.yaml").read_text() == "a: 1\n"
    assert (cfg / "a.yaml").is_symlink() and (cfg / "..data").is_symlink()
    assert sorted(p.name for p in cfg.iterdir() if not p.name.startswith("..")) == [
        "a.yaml",
        "b.txt",
    ]
    assert (volumes.path("picked") / "renamed.yaml").read_text() == "a: 1\n"
    token = volumes.path("creds") / "token"
    assert token.read_bytes() == b"s3cret"
    assert stat.S_IMODE(token.resolve().stat().st_mode) == 0o400
    podinfo = volumes.path("podinfo")
    assert (podinfo / "labels").read_text() == 'app="a"\ntier="b"\n'
    assert (podinfo / "xy").read_text() == "1"


def test_annotation_update_swaps_atomically(volumes):
    podinfo = volumes.path("podinfo")
    before = (podinfo / "..data").resolve()
    volumes.set_annotations({"x/y": "2"})
    assert (podinfo / "xy").read_text() == "2"
    after = (podinfo / "..data").resolve()
    assert after != before and not before.exists()


def test_host_path_and_missing_objects_are_refused(tmp_path):
    for volume, message in (
        ({"name": "h", "hostPath": {"path": "/"}}, "hostPath is not allowed"),
        ({"name": "m", "configMap": {"name": "nope"}}, "ConfigMap 'nope' not found"),
    ):
        pod = {"metadata": {}, "spec": {"volumes": [volume]}}
        with pytest.raises(VolumeError, match=message):
            PodVolumes(tmp_path / volume["name"], pod, {}).create()


def test_optional_missing_config_map_is_empty(tmp_path):
    pod = {"spec": {"volumes": [{"name": "o", "configMap": {"name": "nope", "optional": True}}]}}
    v = PodVolumes(tmp_path / "v", pod, {})
    v.create()
    assert [p.name for p in v.path("o").iterdir() if not p.name.startswith("..")] == []


def test_remove(volumes):
    volumes.remove()
    assert not volumes.root.exists()


def test_a_node_agents_host_paths_are_the_nodes_own_directories(tmp_path):
    """Found under the node's root, never outside it, whatever links lie on the way."""
    node = tmp_path / "node"
    (node / "etc" / "cni").mkdir(parents=True)
    (node / "escape").symlink_to(tmp_path)
    volumes = [
        {"name": "conf", "hostPath": {"path": "/etc/cni", "type": "Directory"}},
        {"name": "made", "hostPath": {"path": "/var/run/made", "type": "DirectoryOrCreate"}},
    ]
    pod = {"metadata": {}, "spec": {"volumes": volumes}}
    v = PodVolumes(tmp_path / "v", pod, {}, host_root=node)
    v.create()
    assert v.path("conf") == node / "etc" / "cni"
    assert (node / "var" / "run" / "made").is_dir()
    v.remove()
    assert (node / "etc" / "cni").is_dir()  # the node's, not the pod's to remove
    for volume, message in (
        ({"name": "x", "hostPath": {"path": "/escape/x"}}, "leaves the node"),
        ({"name": "y", "hostPath": {"path": "/nowhere", "type": "Directory"}}, "is no directory"),
    ):
        bad = {"metadata": {}, "spec": {"volumes": [volume]}}
        with pytest.raises(VolumeError, match=message):
            PodVolumes(tmp_path / volume["name"], bad, {}, host_root=node).create()
