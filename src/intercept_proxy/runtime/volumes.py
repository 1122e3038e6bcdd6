"""Pod volumes as directories, laid out the way the kubelet lays them out.

ConfigMap, Secret and downwardAPI volumes hold their files behind a `..data` symlink to a
timestamped directory, swapped atomically on update, so a reader (the agent's file watcher)
never sees a half-written file, exactly as in a cluster. hostPath is refused, but for a pod whose
caller gives it a node's filesystem (`host_root`, a directory standing for the node's `/`): its
paths are found there, never outside.
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intercept_proxy.pki.files import write_file
from intercept_proxy.runtime.mounts import MS_NODEV, MS_NOSUID, mount, unmount_under


class VolumeError(ValueError):
    """A volume this runtime cannot provide; the message names it."""


_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SUFFIXES |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: object) -> int:
    """A size as Kubernetes writes it (`64Mi`, `1G`, `1048576`), in bytes."""
    text = str(quantity)
    number = text.rstrip("kMGTi")
    suffix = text[len(number) :]
    if suffix not in _SUFFIXES or not number.isdigit():
        raise VolumeError(f"sizeLimit {quantity!r}: a size such as 64Mi or 1G")
    return int(number) * _SUFFIXES[suffix]


def _key_files(
    source: dict[str, Any], data: Mapping[str, bytes], volume: str
) -> dict[str, tuple[bytes, int]]:
    """Files of a ConfigMap or Secret volume: every key, or the listed `items`."""
    default_mode = source.get("defaultMode", 0o644)
    items = source.get("items")
    if items is None:
        return {key: (value, default_mode) for key, value in data.items()}
    out = {}
    for item in items:
        if item["key"] not in data:
            raise VolumeError(f"volume {volume!r}: key {item['key']!r} not found")
        out[item["path"]] = (data[item["key"]], item.get("mode", default_mode))
    return out


def _downward_value(field: str, metadata: dict[str, Any]) -> str:
    """A downwardAPI field; labels and annotations render as sorted `key="value"` lines."""
    if field in ("metadata.labels", "metadata.annotations"):
        values = metadata.get(field.split(".")[1]) or {}
        return "".join(f'{k}="{v}"\n' for k, v in sorted(values.items()))
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if field.startswith(prefix) and field.endswith("']"):
            return str((metadata.get(kind) or {}).get(field[len(prefix) : -2], ""))
    if field in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(metadata.get(field.split(".")[1], ""))
    raise VolumeError(f"downwardAPI field {field!r} is not supported")


def _downward_files(
    source: dict[str, Any], metadata: dict[str, Any]
) -> dict[str, tuple[bytes, int]]:
    mode = source.get("defaultMode", 0o644)
    return {
        item["path"]: (
            _downward_value(item["fieldRef"]["fieldPath"], metadata).encode(),
            item.get("mode", mode),
        )
        for item in source.get("items") or []
    }


def _publish(directory: Path, files: dict[str, tuple[bytes, int]], uid: int, gid: int) -> None:
    """Write `files` into a fresh `..TIMESTAMP` dir and swap `..data` to it atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir(mode=0o755)
    for name, (content, mode) in files.items():
        path = stamp / name
        # Admission checked every name; nothing written here ever leaves the volume, whatever.
        if (
            name.startswith("/")
            or ".." in name.split("/")
            or not path.resolve().is_relative_to(stamp.resolve())
        ):
            raise VolumeError(f"{directory.name}: {name!r} is not a file inside the volume")
        write_file(path, content, mode)
        os.chown(path, uid, gid)
    data_link = directory / "..data"
    previous = data_link.resolve() if data_link.is_symlink() else None
    tmp_link = directory / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp.name)
    tmp_link.replace(data_link)
    for name in files:
        top = directory / name.split("/")[0]
        if not top.is_symlink():
            top.symlink_to(f"..data/{name.split('/')[0]}")
    if previous is not None and previous != stamp:
        shutil.rmtree(previous, ignore_errors=True)


class PodVolumes:
    """The volumes of one pod under `root` (a directory only root may enter: containers reach a
    volume through their own mount of it, never through this path)."""

    def __init__(
        self,
        root: Path,
        pod: dict[str, Any],
        objects: Mapping[tuple[str, str], dict[str, Any]],
        owner: tuple[int, int] = (0, 0),
        host_root: Path | None = None,
    ) -> None:
        """`objects`: ConfigMaps and Secrets by (kind, name)."""
        self.root = root
        self.pod = pod
        self.objects = objects
        self.owner = owner
        self.host_root = host_root
        self._host_paths = {
            v["name"]: str(v["hostPath"]["path"])
            for v in (pod.get("spec") or {}).get("volumes") or []
            if "hostPath" in v
        }

    def path(self, name: str) -> Path:
        if name in self._host_paths:
            return self._host_path(name)
        return self.root / name

    def _host_path(self, name: str) -> Path:
        """A hostPath volume's directory: inside the node's filesystem, whatever links lie on
        the way."""
        if self.host_root is None:
            raise VolumeError(f"volume {name!r}: hostPath is not allowed")
        root = self.host_root.resolve()
        path = (root / self._host_paths[name].lstrip("/")).resolve()
        if not path.is_relative_to(root):
            raise VolumeError(f"volume {name!r}: {self._host_paths[name]} leaves the node")
        return path

    def object_data(self, kind: str, name: str) -> dict[str, bytes] | None:
        """A ConfigMap's or a Secret's data; None if there is no such object."""
        obj = self.objects.get((kind, name))
        if obj is None:
            return None
        if kind == "ConfigMap":
            return {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return data | {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}

    def _data(self, kind: str, name: str, volume: str, optional: bool) -> dict[str, bytes]:
        data = self.object_data(kind, name)
        if data is None:
            if optional:
                return {}
            raise VolumeError(f"volume {volume!r}: {kind} {name!r} not found")
        return data

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            self._create(volume)

    def _create(self, volume: dict[str, Any]) -> None:
        name = volume["name"]
        path = self.path(name)
        if "emptyDir" in volume:
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # as the kubelet makes them: any container user may write
            source = volume["emptyDir"] or {}
            if source.get("medium") == "Memory":  # in memory, as asked: a CA key never on disk
                limit = source.get("sizeLimit")
                size = f",size={quantity_bytes(limit)}" if limit is not None else ""
                mount("tmpfs", str(path), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0777{size}")
        elif "configMap" in volume:
            source = volume["configMap"]
            data = self._data("ConfigMap", source["name"], name, source.get("optional", False))
            _publish(path, _key_files(source, data, name), *self.owner)
        elif "secret" in volume:
            source = volume["secret"]
            data = self._data("Secret", source["secretName"], name, source.get("optional", False))
            _publish(path, _key_files(source, data, name), *self.owner)
        elif "downwardAPI" in volume:
            self.update_downward_api(volume)
        elif "hostPath" in volume:
            kind = volume["hostPath"].get("type") or "Directory"
            if kind == "DirectoryOrCreate":
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            elif not path.is_dir():
                raise VolumeError(f"volume {name!r}: {self._host_paths[name]} is no directory")
        else:
            kinds = sorted(set(volume) - {"name"})
            raise VolumeError(f"volume {name!r}: unsupported volume type {kinds}")

    def update_downward_api(self, volume: dict[str, Any]) -> None:
        metadata = self.pod.get("metadata") or {}
        files = _downward_files(volume["downwardAPI"], metadata)
        _publish(self.path(volume["name"]), files, *self.owner)

    def set_annotations(self, annotations: dict[str, str]) -> None:
        """What `kubectl annotate` does to a running pod: downwardAPI volumes follow."""
        self.pod.setdefault("metadata", {})["annotations"] = dict(annotations)
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            if "downwardAPI" in volume:
                self.update_downward_api(volume)

    def remove(self) -> None:
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)
