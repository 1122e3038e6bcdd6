"""The cluster's supervisor: a daemon (`python -m intercept_proxy.cluster.supervisor STATE_DIR`)
that owns every process of one cluster, started by `Cluster.up` and stopped by `Cluster.down`.

It creates the PKI and kubeconfigs, starts the lab (if any), etcd, kube-apiserver and
kube-controller-manager, installs Kyverno and runs its controllers, starts the node agent,
checks that all of it is ready, then writes `ready` (with the time each step took) and watches
its children, restarting any that exits. SIGTERM stops everything it started, in order.
Whatever it could not finish is in `failed` and its log (`logs/supervisor.log`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from intercept_proxy import signals
from intercept_proxy.cluster import components, dns, kyverno
from intercept_proxy.cluster.client import ApiError, Credentials, KubeClient
from intercept_proxy.cluster.kubeconfig import kubeconfig, write_kubeconfig
from intercept_proxy.cluster.layout import Config
from intercept_proxy.cluster.node.network import api_endpoint
from intercept_proxy.cluster.pki import POLICY_READER_USER, ClusterPki
from intercept_proxy.cluster.processes import Child, child_env
from intercept_proxy.cluster.tools import Tools
from intercept_proxy.lab import Lab, LabSpec

log = logging.getLogger("intercept_proxy.cluster.supervisor")

READY_TIMEOUT = 150.0
# A child that exited this often while the cluster starts is broken (a bad flag, say), not slow:
# the engines exit on a timeout of their own (Kyverno on an informer that did not sync) and are
# started again, with a back-off (0.5, 1, 2, 4, 8 s).
GIVE_UP_EXITS = 6
POLICY_READER_ROLE = "intercept-cluster:injection-policy-reader"
# A ClusterPolicy Kyverno accepts, and one only Kyverno refuses (a variable in its match, which
# the CRD's schema allows): the dry runs prove its webhook is registered and answering.
PROBE_POLICY = {
    "apiVersion": "kyverno.io/v1",
    "kind": "ClusterPolicy",
    "metadata": {"name": "intercept-cluster-readiness-probe"},
    "spec": {
        "rules": [
            {
                "name": "probe",
                "match": {"any": [{"resources": {"kinds": ["ConfigMap"]}}]},
                "validate": {
                    "failureAction": "Audit",
                    "message": "probe",
                    "pattern": {"metadata": {"name": "?*"}},
                },
            }
        ]
    },
}
PROBE_NAMES = ["{{request.object.metadata.name}}"]


def _files(config: Config) -> dict[str, Path]:
    return {
        "ready": config.path("ready"),
        "failed": config.path("failed"),
        "pid": config.path("supervisor.pid"),
    }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.tools = Tools.locate()
        self.pki = ClusterPki(config.path("pki"))
        self.children: list[Child] = []
        self.lab: Lab | None = None
        self.stopping = threading.Event()
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        self.admin: KubeClient | None = None

    # -- helpers ------------------------------------------------------------------------------

    def mark(self, step: str) -> None:
        self.timings[step] = round(time.monotonic() - self._t0, 2)
        log.info("%s after %.2fs", step, self.timings[step])

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        c = Child(
            name,
            argv,
            self.config.path("logs", f"{name}.log"),
            self.config.path("run", name),
            env=child_env(env),
        )
        c.start()
        self.children.append(c)
        return c

    def kubeconfig_for(self, name: str, pki_name: str, user: str) -> Path:
        path = self.config.path("kubeconfigs", f"{name}.kubeconfig")
        cert, key = self.pki.cert(pki_name), self.pki.key(pki_name)
        return write_kubeconfig(
            path, kubeconfig(self.config.server, self.pki.ca, user, cert=cert, key=key)
        )

    def wait(self, what: str, check: Any, timeout: float = READY_TIMEOUT) -> Any:
        """Like KubeClient.wait_for, but also fails at once when a child gives up or we stop."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            if self.stopping.is_set():
                raise RuntimeError(f"stopped while waiting for {what}")
            try:
                result = check()
                if result:
                    return result
            except (ApiError, KeyError, TypeError, OSError) as e:
                last = e
            for c in self.children:
                if len(c.exits) >= GIVE_UP_EXITS:
                    raise RuntimeError(
                        f"{c.name} keeps exiting (statuses {c.exits}) while waiting for {what}; "
                        f"see {c.log_path}"
                    )
                c.check(stopping=False)
            if time.monotonic() > deadline:
                detail = f" (last error: {last})" if last else ""
                raise TimeoutError(f"{what}: not after {timeout:.0f}s{detail}")
            time.sleep(0.1)

    # -- start --------------------------------------------------------------------------------

    def start(self) -> None:
        config, tools, pki = self.config, self.tools, self.pki
        pki.create(config.node_name, config.api_service_ip, config.cluster_domain)
        for d in ("logs", "kubeconfigs", "run"):
            config.path(d).mkdir(mode=0o700, exist_ok=True)
        admin_config = self.kubeconfig_for("admin", "admin", "admin")
        config.path("kubeconfig").symlink_to(admin_config)
        self.mark("pki")
        with ThreadPoolExecutor(3) as pool:
            # Parsed while the API server starts (Kyverno's manifests are 6 MB of YAML).
            crds = pool.submit(kyverno.crd_documents, tools)
            documents = pool.submit(kyverno.install_documents, tools)
            lab = pool.submit(self._start_lab)
            self._start_control_plane()
            self._bootstrap(crds, documents, lab)
        self._wait_ready()

    def _start_lab(self) -> None:
        if self.config.lab_spec is None:
            return
        spec = LabSpec.from_dict(self.config.lab_spec, source="lab spec")
        self.lab = Lab(spec, prefix=self.config.lab_prefix, state_dir=self.config.path("lab"))
        self.lab.start()
        self.mark("lab")

    def _start_control_plane(self) -> None:
        config, tools, pki = self.config, self.tools, self.pki
        self.child("etcd", components.etcd(tools, config, pki))
        self.child("kube-apiserver", components.kube_apiserver(tools, config, pki))
        kcm = self.kubeconfig_for(
            "controller-manager", "controller-manager", "system:kube-controller-manager"
        )
        self.child(
            "kube-controller-manager", components.kube_controller_manager(tools, config, pki, kcm)
        )
        self.admin = KubeClient(
            Credentials(config.server, pki.ca, pki.cert("admin"), pki.key("admin"))
        )
        admin = self.admin
        self.wait("kube-apiserver /readyz", lambda: admin.request("GET", "/readyz", raw=True))
        self.mark("apiserver")

    def _bootstrap(self, crds: Future[Any], documents: Future[Any], lab: Future[Any]) -> None:
        config, admin = self.config, self.admin
        assert admin is not None
        admin.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": POLICY_READER_ROLE},
                "rules": [
                    {
                        "apiGroups": ["kyverno.io"],
                        "resources": ["clusterpolicies"],
                        "verbs": ["get", "list", "watch"],
                    },
                    # A pod asking for the node runs only as a DaemonSet's, in a privileged
                    # namespace.
                    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
                    {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]},
                ],
            }
        )
        admin.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": POLICY_READER_ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": POLICY_READER_ROLE,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": POLICY_READER_USER,
                    }
                ],
            }
        )
        for obj in [*dns.objects(config), api_endpoint(config)]:
            admin.apply(obj)
        node = f"system:node:{config.node_name}"
        self.kubeconfig_for("node", "node", node)
        self.kubeconfig_for("scheduler", "scheduler", "system:kube-scheduler")
        self.kubeconfig_for("policy-reader", "injection-policy-reader", POLICY_READER_USER)
        lab.result()  # the node attaches pods to the lab
        self.child(
            "node",
            [sys.executable, "-m", "intercept_proxy.cluster.node", str(config.dir)],
            env={"PYTHONUNBUFFERED": "1"},
        )
        manifest = documents.result()
        kyverno.install(admin, crds.result(), manifest)
        self.mark("kyverno installed")
        self.wait("Kyverno's ClusterRoles aggregated", lambda: kyverno.roles_aggregated(admin))
        for controller in kyverno.CONTROLLERS:
            path = kyverno.write_controller_kubeconfig(admin, config, self.pki, controller)
            deployment = kyverno.deployment(manifest, controller.deployment)
            home = config.path("run", controller.deployment)
            home.mkdir(parents=True, exist_ok=True)
            self.child(
                controller.deployment,
                kyverno.controller_argv(
                    self.tools, deployment, controller, kyverno.overrides(config, controller, path)
                ),
                env=kyverno.controller_env(deployment, f"{controller.deployment}-local", home),
            )
        self.mark("kyverno started")

    def _wait_ready(self) -> None:
        admin, config = self.admin, self.config
        assert admin is not None
        webhook = (
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
            + kyverno.POLICY_WEBHOOK
        )
        self.wait("Kyverno's policy webhook registered", lambda: admin.get_or_none(webhook))
        policies = "/apis/kyverno.io/v1/clusterpolicies"
        self.wait(
            "a dry-run ClusterPolicy admitted by Kyverno",
            lambda: admin.create(policies, PROBE_POLICY, dryRun="All"),
        )
        refused = json.loads(json.dumps(PROBE_POLICY))
        refused["spec"]["rules"][0]["match"]["any"][0]["resources"]["names"] = PROBE_NAMES
        try:
            admin.create(policies, refused, dryRun="All")
        except ApiError as e:
            if "kyverno" not in e.message.lower():
                raise RuntimeError(
                    f"a policy Kyverno must refuse was refused, not by it: {e}"
                ) from e
        else:
            raise RuntimeError("Kyverno's webhook admitted a policy with a variable in its match")
        self.mark("kyverno ready")
        self.wait(
            "ServiceAccount default/default",
            lambda: admin.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
        )
        self.mark("default service account")
        self.wait(f"node {config.node_name} Ready", lambda: _node_ready(admin, config.node_name))
        self.mark("node ready")

    # -- run and stop -------------------------------------------------------------------------

    def watch(self) -> None:
        while not self.stopping.wait(0.5):
            for c in self.children:
                c.check(stopping=self.stopping.is_set())

    def stop(self) -> None:
        self.stopping.set()
        # The node first (it stops its pods), the engines in reverse order of their start.
        node = [c for c in self.children if c.name == "node"]
        rest = [c for c in reversed(self.children) if c.name != "node"]
        for c in [*node, *rest]:
            try:
                c.stop(timeout=90 if c.name == "node" else None)
            except Exception:
                log.exception("stopping %s", c.name)
        if self.lab is not None:
            self.lab.stop()


def _node_ready(client: KubeClient, name: str) -> bool:
    node = client.get_or_none(f"/api/v1/nodes/{name}")
    conditions = ((node or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def main(argv: list[str]) -> int:
    state_dir = Path(argv[0])
    config = Config.load(state_dir)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    files = _files(config)
    files["pid"].write_text(f"{os.getpid()}\n")
    supervisor = Supervisor(config)

    def said(signum: int) -> None:
        log.info("signal %d: stopping", signum)

    status = 0
    stopping = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    with signals.setting(supervisor.stopping, stopping, said):
        try:
            supervisor.start()
            write_json(files["ready"], {"timings": supervisor.timings})
            log.info("ready: %s", supervisor.timings)
            supervisor.watch()
        except Exception as e:
            log.exception("the cluster did not start")
            write_json(files["failed"], {"error": str(e), "timings": supervisor.timings})
            status = 1
        finally:
            supervisor.stop()
            log.info("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
