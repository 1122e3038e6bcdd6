"""The red team against the host: a hostile Pod manifest, or a workload that plans for later,
must never get this machine. Each case checks what happened from the host's side: its files,
modes and processes, the lab's receipts, never the sandbox's word.

Classes (the hardening issue): identities, paths from the manifest, objects replacing the
operator's, leftovers that run later or cross sandboxes, the kernel surface, inbound
connections, and what `ps` shows."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept_proxy import netns

pytestmark = pytest.mark.netns

LAB = "hosts: [{name: pypi.org}]\n"
WORKLOAD_UID = 12345
POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: hostile, labels: {{intercept-proxy/enabled: "true"}}}}
spec:
  securityContext: {security}
  containers:
    - name: app
      image: busybox:1.36
      command: [sh, -c, {script}]
      volumeMounts: {mounts}
  volumes: {volumes}
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="redteam-host-", dir="/tmp"))
    path.chmod(0o755)
    (path / "lab.yaml").write_text(LAB)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def intercept(*args: str) -> list[str]:
    """`intercept run` against the lab of the working directory's lab.yaml."""
    return [sys.executable, "-m", "intercept_proxy", "run", "--lab", "lab.yaml", *args]


def run(workdir: Path, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        intercept(*args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def run_pod(
    workdir: Path,
    script: str = "true",
    security: object = None,
    mounts: object = (),
    volumes: object = (),
    extra: str = "",
) -> subprocess.CompletedProcess:
    pod = POD.format(
        security=json.dumps(security or {"runAsUser": WORKLOAD_UID}),
        script=json.dumps(script),
        mounts=json.dumps(list(mounts)),
        volumes=json.dumps(list(volumes)),
    )
    (workdir / "pod.yaml").write_text(pod + extra)
    return run(workdir, "--pod", "pod.yaml")


# -- identities ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("security", "field"),
    [
        # (uid_t)-1 and its 32-bit aliases read as "unchanged": the workload would stay root.
        ({"runAsUser": -1}, "spec.securityContext.runAsUser"),
        ({"runAsUser": 4294967295}, "spec.securityContext.runAsUser"),
        ({"runAsUser": 2147483648}, "spec.securityContext.runAsUser"),
        ({"runAsUser": WORKLOAD_UID, "runAsGroup": -1}, "spec.securityContext.runAsGroup"),
        ({"runAsUser": WORKLOAD_UID, "runAsGroup": 6}, "spec.securityContext.runAsGroup"),
        ({"runAsUser": WORKLOAD_UID, "runAsGroup": 4294967295}, "spec.securityContext.runAsGroup"),
        ({"runAsUser": 500}, "spec.securityContext.runAsUser"),  # a system account's range
        ({"runAsUser": WORKLOAD_UID, "fsGroup": 42}, "spec.securityContext.fsGroup"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_identities_outside_the_valid_range_never_run(workdir, security, field):
    marker = workdir / "ran"
    result = run_pod(workdir, f"touch {marker}", security=security)
    assert result.returncode == 2, result.stderr
    assert f"intercept run: {field}: " in result.stderr
    assert not marker.exists()


def test_the_process_is_exactly_the_identity_it_was_given(sandbox):
    """The runtime checks the kernel's view after dropping privileges; this is that view."""
    status = sandbox.sh(
        "grep -E '^(Uid|Gid|Groups|Cap[a-zA-Z]+|NoNewPrivs|Seccomp):' /proc/self/status"
    )
    fields = dict(line.split(":", 1) for line in status.stdout.decode().splitlines())
    fields = {k: " ".join(v.split()) for k, v in fields.items()}
    assert fields["Uid"] == fields["Gid"] == " ".join([str(WORKLOAD_UID)] * 4)
    assert fields["Groups"] == ""
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, cap
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"


# -- paths from the manifest -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("volume", "field"),
    [
        # Named like a host directory: it used to become a 0777 read-write bind of it.
        ({"name": "../../../../etc", "emptyDir": {}}, "spec.volumes[0].name"),
        (
            {"name": "c", "configMap": {"name": "c", "items": [{"key": "k", "path": "../../x"}]}},
            "spec.volumes[0].configMap.items[0].path",
        ),
        (
            {"name": "c", "configMap": {"name": "c", "items": [{"key": "k", "path": "/etc/x"}]}},
            "spec.volumes[0].configMap.items[0].path",
        ),
        (
            {"name": "s", "secret": {"secretName": "c", "items": [{"key": "../k", "path": "k"}]}},
            "spec.volumes[0].secret.items[0].key",
        ),
        (
            {
                "name": "d",
                "downwardAPI": {
                    "items": [{"path": "../../../x", "fieldRef": {"fieldPath": "metadata.name"}}]
                },
            },
            "spec.volumes[0].downwardAPI.items[0].path",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v["name"],
)
def test_volume_names_keys_and_item_paths_never_reach_host_paths(workdir, volume, field):
    before = {p.name for p in Path("/tmp").iterdir()} | {p.name for p in Path("/etc").iterdir()}
    objects = (
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: planted}\n"
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: c}\nstringData: {k: planted}\n"
    )
    result = run_pod(workdir, volumes=[volume], extra=objects)
    assert result.returncode == 2, result.stderr
    assert f"intercept run: {field}: " in result.stderr
    after = {p.name for p in Path("/tmp").iterdir()} | {p.name for p in Path("/etc").iterdir()}
    assert not {"x", "k"} & (after - before)


@pytest.fixture
def planted() -> Iterator[Path]:
    """A directory of this machine holding a symbolic link to /etc, as a local user could leave
    in a writable place of the image, and a name that must never appear in /etc."""
    name = f"intercept-redteam-{secrets.token_hex(4)}"
    directory = Path("/var/lib") / name
    directory.mkdir()
    (directory / "link").symlink_to("/etc")
    yield directory
    shutil.rmtree(directory)
    for leftover in (Path("/etc") / name, Path("/opt") / name):
        assert not leftover.exists(), f"{leftover} was created on this machine"


def test_mount_points_and_root_writes_stay_in_the_containers_own_layer(workdir, planted):
    name = planted.name
    mounts = [
        # Missing on this machine: made in the container's layer, never here.
        {"name": "scratch", "mountPath": f"/opt/{name}/deep/dir"},
        # Through a symbolic link to /etc: resolved inside the container's root.
        {"name": "scratch", "mountPath": f"{planted}/link/{name}"},
    ]
    # /tmp and /var/tmp are this machine's directories in its root filesystem, and writable.
    script = (
        f"echo data > /opt/{name}/deep/dir/file && ls -d /etc/{name} && "
        f"echo data > /tmp/{name} && echo data > /var/tmp/{name} && echo wrote"
    )
    result = run_pod(workdir, script, mounts=mounts, volumes=[{"name": "scratch", "emptyDir": {}}])
    assert result.returncode == 0, result.stderr
    assert "[app] wrote" in result.stderr  # inside, every write landed
    assert not (Path("/tmp") / name).exists() and not (Path("/var/tmp") / name).exists()
    assert sorted(p.name for p in planted.iterdir()) == ["link"]


# -- objects replacing the operator's ----------------------------------------------------------


def test_a_pod_file_cannot_replace_the_operators_policy(workdir):
    (workdir / "policy.yaml").write_text("allowed_domains: [pypi.org]\n")
    allow_all = (
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: intercept-proxy-policy}\n"
        "data: {policy.yaml: 'unrestricted_domains: [\"*.org\"]'}\n"
    )
    (workdir / "pod.yaml").write_text(
        POD.format(
            security=json.dumps({"runAsUser": WORKLOAD_UID}),
            script='"true"',
            mounts="[]",
            volumes="[]",
        )
        + allow_all
    )
    result = run(workdir, "--pod", "pod.yaml", "--policy", "policy.yaml")
    assert result.returncode == 2
    assert "ConfigMap 'intercept-proxy-policy' is the interceptor's" in result.stderr


# -- leftovers that run later or cross sandboxes -----------------------------------------------


COMMIT = ["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit"]


def as_workload(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    setpriv = ["setpriv", f"--reuid={WORKLOAD_UID}", f"--regid={WORKLOAD_UID}", "--clear-groups"]
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(
        [*setpriv, *argv], cwd=cwd, capture_output=True, text=True, env=env, check=True
    )


def test_git_metadata_is_read_only_and_nothing_runs_at_the_next_commit(workdir):
    """The workload edits its working directory, but nothing it leaves in git's metadata (hooks,
    config, commondir) runs at the caller's next `git` outside the sandbox."""
    repo = workdir / "repo"
    repo.mkdir()
    shutil.copy(workdir / "lab.yaml", repo)
    os.chown(repo, WORKLOAD_UID, WORKLOAD_UID)
    (repo / "tracked.txt").write_text("v1\n")
    os.chown(repo / "tracked.txt", WORKLOAD_UID, WORKLOAD_UID)
    for argv in (["git", "init", "-q"], ["git", "add", "tracked.txt"], [*COMMIT, "-qm", "start"]):
        as_workload(argv, repo)
    before = sorted(str(p.relative_to(repo)) for p in (repo / ".git").rglob("*"))
    config = (repo / ".git" / "config").read_text()
    mark = repo / "hook-ran"
    attacks = f"""
        for hook in pre-commit post-commit; do
          printf '#!/bin/sh\\ntouch {mark}\\n' > .git/hooks/$hook && chmod +x .git/hooks/$hook \
            && echo WROTE $hook
        done
        git config core.fsmonitor 'touch {mark}' 2>/dev/null && echo WROTE config
        echo ../evil > .git/commondir 2>/dev/null && echo WROTE commondir
        mv .git .git-old 2>/dev/null && echo MOVED
        echo v2 > tracked.txt && echo EDITED
        git init -q sub && echo INIT
    """
    result = subprocess.run(
        intercept("--user", str(WORKLOAD_UID), "--", "sh", "-c", attacks),
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EDITED", "INIT"], result.stdout + result.stderr
    assert f"the workload created the git repository {repo / 'sub' / '.git'}" in result.stderr
    assert (repo / "tracked.txt").read_text() == "v2\n"
    assert sorted(str(p.relative_to(repo)) for p in (repo / ".git").rglob("*")) == before
    assert (repo / ".git" / "config").read_text() == config
    as_workload([*COMMIT, "-qam", "after"], repo)
    as_workload(["git", "status", "--short"], repo)
    assert not mark.exists()


PRIVATE = "echo secret > /tmp/handoff; echo secret > /var/tmp/handoff; echo secret > /dev/shm/h"


def test_tmp_is_the_sandboxes_own_not_this_machines_nor_another_sandboxs(workdir):
    host_file = Path(tempfile.mkstemp(prefix="intercept-redteam-host-", dir="/tmp")[1])
    host_file.chmod(0o644)
    ready = workdir / "a-wrote"
    workdir.chmod(0o777)
    try:
        first = subprocess.Popen(
            [
                *intercept("--user", str(WORKLOAD_UID), "--"),
                "sh",
                "-c",
                f"{PRIVATE}; touch {ready}; sleep 30",
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        second = run(
            workdir,
            "--user",
            str(WORKLOAD_UID + 1),
            "--",
            "sh",
            "-c",
            f"cat /tmp/handoff /var/tmp/handoff /dev/shm/h; ls -a /tmp /var/tmp; ls {host_file}",
        )
        first.terminate()
        first.communicate(timeout=60)
    finally:
        host_file.unlink()
    assert "secret" not in second.stdout + second.stderr
    assert "No such file" in second.stderr and host_file.name not in second.stdout
    for path in ("/tmp/handoff", "/var/tmp/handoff", "/dev/shm/h"):
        assert not Path(path).exists(), path


# -- the kernel surface --------------------------------------------------------------------------


KERNEL = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
calls = {
    "io_uring_setup": (425, 8, params),
    # The process keyring (-2): made on demand, gone with the process.
    "add_key": (248, b"user", b"intercept", b"secret", 6, -2),
    "keyctl": (250, 0, -2, 1),  # KEYCTL_GET_KEYRING_ID, creating it
    "request_key": (249, b"user", b"intercept", None, 0),
    "bpf": (321, 0, None, 0),
    "perf_event_open": (298, None, 0, -1, -1, 0),
    "userfaultfd": (323, 0),
}
out = {}
for name, (number, *args) in calls.items():
    result = libc.syscall(number, *args)
    out[name] = errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else "succeeded"
print(json.dumps(out))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 system call numbers")
def test_io_uring_keyrings_and_other_kernel_interfaces_are_refused(sandbox):
    result = sandbox.exec([sys.executable, "-c", KERNEL])
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == dict.fromkeys(outcome, "EPERM"), outcome


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 system call numbers")
def test_the_same_calls_work_on_this_machine_so_the_refusal_is_the_filter():
    """As the same user outside the sandbox, io_uring and the keyrings answer: the EPERM above
    is the runtime's filter (bpf, perf_event_open and userfaultfd are this machine's sysctls'
    to refuse here too, and the filter's wherever they are not)."""
    setpriv = ["setpriv", f"--reuid={WORKLOAD_UID}", f"--regid={WORKLOAD_UID}", "--clear-groups"]
    result = subprocess.run(
        [*setpriv, sys.executable, "-c", KERNEL], capture_output=True, text=True, check=True
    )
    outcome = json.loads(result.stdout)
    keys = ("io_uring_setup", "add_key", "keyctl", "request_key")
    assert [outcome[k] for k in keys] == ["succeeded"] * 4, outcome


# -- inbound ----------------------------------------------------------------------------------


CONNECT = r"""
import json, socket, sys
out = []
for port in map(int, sys.argv[2:]):
    try:
        socket.create_connection((sys.argv[1], port), timeout=3).close()
        out.append("connected")
    except OSError as e:
        out.append(type(e).__name__)
print(json.dumps(out))
"""


def test_nothing_outside_the_pod_reaches_its_servers(sandbox):
    """Anyone who can route to a pod (in a cluster, every pod) could exchange data with the
    workload's servers outside the policy; only the agent's health port (kubelet probes) is
    open."""
    sandbox.sh(
        "python3 -m http.server 8080 --bind :: >/dev/null 2>&1 & "
        "python3 -m http.server 15099 --bind :: >/dev/null 2>&1 & sleep 1"
    )
    for loopback in ("127.0.0.1", "::1"):  # the server is there, IPv4 and IPv6
        inside = sandbox.exec([sys.executable, "-c", CONNECT, loopback, "8080"])
        assert json.loads(inside.stdout) == ["connected"]
    for family in ("-4", "-6"):
        pod_address = next(
            a["local"]
            for link in json.loads(netns.ip("-n", sandbox.netns, "-j", family, "address"))
            for a in link["addr_info"]
            if link["ifname"] != "lo" and a.get("scope") == "global"
        )
        ports = ["8080", "15099", "15020", "15021", "15090"]
        connect = [sys.executable, "-c", CONNECT, pod_address, *ports]
        outside = json.loads(netns.run(sandbox.lab.netns, connect).stdout)
        refused = "ConnectionRefusedError"
        assert outside == [refused, refused, "connected", refused, refused], (family, outside)


# -- what ps shows -----------------------------------------------------------------------------


def test_no_specification_or_environment_on_any_command_line(workdir):
    token = secrets.token_hex(16)
    ready = workdir / "running"
    workdir.chmod(0o777)
    process = subprocess.Popen(
        [*intercept("--user", str(WORKLOAD_UID), "--"), "sh", "-c", f"touch {ready}; sleep 30"],
        cwd=workdir,
        env={**os.environ, "INTERCEPT_REDTEAM_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.1)
        # What any local user reads: every process's command line (and what environ it may).
        scan = (
            "import os, pathlib, sys\n"
            "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
            "    for f in ('cmdline', 'environ'):\n"
            "        try: data = (p / f).read_bytes()\n"
            "        except OSError: continue\n"
            "        if sys.argv[1].encode() in data and p.name != str(os.getpid()): print(p, f)\n"
        )
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        seen = subprocess.run(
            [*nobody, sys.executable, "-c", scan, token], capture_output=True, text=True, check=True
        )
        assert seen.stdout == ""
    finally:
        process.terminate()
        process.communicate(timeout=60)


# -- found by a later red team --------------------------------------------------------------------


def test_configmap_keys_never_name_host_files(workdir):
    """A key of the object itself (no `items`): it used to become a file anywhere, as root."""
    name = f"intercept-redteam-{secrets.token_hex(4)}"
    planted = (
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        f'data: {{"../../../../../etc/{name}": "#!/bin/sh\\n", "/etc/{name}-abs": "x"}}\n'
    )
    volume = {"name": "c", "configMap": {"name": "c", "defaultMode": 0o755}}
    mount = {"name": "c", "mountPath": "/c"}
    result = run_pod(workdir, mounts=[mount], volumes=[volume], extra=planted)
    assert result.returncode == 2, result.stderr
    assert "intercept run: ConfigMap c: data[" in result.stderr
    assert not (Path("/etc") / name).exists() and not (Path("/etc") / f"{name}-abs").exists()


def test_an_exec_probe_never_runs_the_containers_programs_as_root(workdir):
    """A probe joins the container as its user: nothing found through the container's PATH or
    environment runs before the process is that user."""
    plant = (
        "mkdir -p /evil; for p in setpriv nsenter env sh test id; do "
        "printf '#!/bin/sh\\ntouch /shared/ran-as-$(/usr/bin/id -u)\\nexec /usr/bin/'$p' \"$@\"\\n'"
        " > /evil/$p; chmod 755 /evil/$p; done; sleep 600"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"intercept-proxy/enabled": "true"}},
        "spec": {
            "securityContext": {"runAsUser": WORKLOAD_UID},
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {
                    "name": "side",
                    "image": "busybox:1.36",
                    "restartPolicy": "Always",
                    "env": [
                        {"name": "PATH", "value": "/evil:/usr/sbin:/usr/bin:/sbin:/bin"},
                        {"name": "LD_PRELOAD", "value": "/evil/nothing.so"},
                    ],
                    "command": ["/bin/sh", "-c", plant],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                    "startupProbe": {
                        "exec": {"command": ["sh", "-c", "id -u > /shared/probe-uid"]},
                        "periodSeconds": 1,
                        "failureThreshold": 30,
                    },
                }
            ],
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.36",
                    "command": ["/bin/sh", "-c", "cat /shared/probe-uid; ls /shared"],
                    "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
                }
            ],
        },
    }
    (workdir / "pod.yaml").write_text(json.dumps(pod))
    result = run(workdir, "--pod", "pod.yaml")
    assert result.returncode == 0, result.stderr
    assert f"[app] {WORKLOAD_UID}" in result.stderr  # the probe ran, as the container's user
    assert "ran-as-0" not in result.stderr


def test_a_planted_git_link_binds_nothing_into_the_next_run(workdir):
    hidden = Path(tempfile.mkdtemp(prefix="redteam-hidden-", dir="/tmp"))
    (hidden / "secret.txt").write_text("host secret\n")
    hidden.chmod(0o755)
    workdir.chmod(0o777)
    try:
        first = run(
            workdir,
            "--user",
            str(WORKLOAD_UID),
            "--",
            "sh",
            "-c",
            f"mkdir leak; ln -s {hidden} leak/.git",
        )
        assert first.returncode == 0, first.stderr
        second = run(
            workdir, "--user", str(WORKLOAD_UID), "--", "sh", "-c", "cat leak/.git/secret.txt"
        )
        assert "host secret" not in second.stdout
    finally:
        shutil.rmtree(hidden)


def test_a_working_directory_the_user_may_not_enter_stays_closed(workdir):
    # 0700, root's, in the image (this machine's /tmp is not: it starts empty in a container).
    closed = Path(tempfile.mkdtemp(prefix="intercept-redteam-", dir="/var/lib"))
    (closed / "open").mkdir(mode=0o755)
    (closed / "open" / "secret.txt").write_text("root's\n")
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "wd", "labels": {"intercept-proxy/enabled": "true"}},
            "spec": {
                "securityContext": {"runAsUser": WORKLOAD_UID},
                "containers": [
                    {
                        "name": "app",
                        "image": "busybox:1.36",
                        "workingDir": str(closed / "open"),
                        "command": ["cat", "secret.txt"],
                    }
                ],
            },
        }
        (workdir / "pod.yaml").write_text(json.dumps(pod))
        result = run(workdir, "--pod", "pod.yaml")
        assert "root's" not in result.stderr
        assert "Permission denied" in result.stderr
    finally:
        shutil.rmtree(closed)


def test_nested_repositories_cannot_be_moved_aside_and_bare_ones_are_named(workdir):
    repo = workdir / "repo"
    (repo / "sub").mkdir(parents=True)
    for path in (repo, repo / "sub"):
        subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["chown", "-R", f"{WORKLOAD_UID}:{WORKLOAD_UID}", str(repo)], check=True)
    shutil.copy(workdir / "lab.yaml", repo)
    script = "mv sub sub-orig && echo MOVED; git init -q --bare notes && echo BARE"
    result = subprocess.run(
        [*intercept("--user", str(WORKLOAD_UID), "--"), "sh", "-c", script],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.split() == ["BARE"], result.stdout + result.stderr
    assert (repo / "sub" / ".git").is_dir() and not (repo / "sub-orig").exists()
    assert f"the workload created the git repository {repo / 'notes'}" in result.stderr


def test_setuid_and_setgid_bits_are_never_set(workdir):
    workdir.chmod(0o777)
    script = (
        "cp /bin/true mine; chmod 4755 mine; chmod 2755 mine; "
        "python3 -c \"import os; os.open('made', os.O_CREAT | os.O_WRONLY, 0o4755)\"; "
        "ls -l mine made"
    )
    result = run(workdir, "--user", str(WORKLOAD_UID), "--", "sh", "-c", script)
    assert "Operation not permitted" in result.stderr
    for name in ("mine", "made"):
        mode = (workdir / name).stat().st_mode if (workdir / name).exists() else 0
        assert not mode & 0o6000, name


def test_without_sudo_the_workload_gets_a_uid_of_its_own(workdir):
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER")}
    result = run(workdir, "--", "id", "-u", env=env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 2_000_000_000  # no account's, not nobody's


def test_the_callers_terminal_is_never_handed_over(workdir):
    """stdin from a pipe, stdout on a terminal: the workload gets a pipe, never the terminal
    (whose descriptor would read what the caller types)."""
    import pty

    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [
                *intercept("--user", str(WORKLOAD_UID), "--"),
                "python3",
                "-c",
                "import os; print(os.isatty(1), os.isatty(2))",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        process.wait(120)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    assert b"False False" in out, out


def test_memory_volumes_are_in_memory(sandbox):
    """The agent's CA key is written to an in-memory volume, as its manifest says."""
    ca = str(sandbox.pod.volumes.path("intercept-ca"))
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    (line,) = [m for m in mounts if m.split()[4] == ca]
    assert line.split(" - ")[1].split()[0] == "tmpfs"
