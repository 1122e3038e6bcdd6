"""The command lines of the control plane's processes. Pure functions of the cluster's Config.

Flags of note (each is what a real cluster, kubeadm's say, has, or the reason it differs):
- etcd: loopback only, TLS with client certificates on both ports, `--unsafe-no-fsync` (a
  test cluster's data is thrown away; fsync dominated start-up and every write).
- kube-apiserver: its default admission plugins plus NodeRestriction, `Node,RBAC`
  authorization, service account issuer and keys, `--allow-privileged` (kubeadm's), the
  kubelet client certificate and CA (`kubectl logs`), `--endpoint-reconciler-type=none`
  (the only address it has is loopback, which an Endpoints object may not hold).
- kube-controller-manager: every default controller, its controllers with their own service
  accounts, no leader election, no serving port (two clusters may run at once).
"""

from __future__ import annotations

from pathlib import Path

from intercept_proxy.cluster.layout import Config
from intercept_proxy.cluster.pki import ClusterPki
from intercept_proxy.cluster.tools import Tools

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def etcd(tools: Tools, config: Config, pki: ClusterPki) -> list[str]:
    client = f"https://127.0.0.1:{config.ports.etcd_client}"
    peer = f"https://127.0.0.1:{config.ports.etcd_peer}"
    cert, key, ca = pki.cert("etcd-server"), pki.key("etcd-server"), pki.ca
    return [
        str(tools.binary("etcd")),
        f"--name={config.name}",
        f"--data-dir={config.path('etcd')}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={config.name}={peer}",
        "--initial-cluster-state=new",
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth=true",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth=true",
        "--unsafe-no-fsync=true",
        "--snapshot-count=10000",
        "--log-level=warn",
    ]


def kube_apiserver(tools: Tools, config: Config, pki: ClusterPki) -> list[str]:
    return [
        str(tools.binary("kube-apiserver")),
        f"--etcd-servers=https://127.0.0.1:{config.ports.etcd_client}",
        f"--etcd-cafile={pki.ca}",
        f"--etcd-certfile={pki.cert('apiserver-etcd-client')}",
        f"--etcd-keyfile={pki.key('apiserver-etcd-client')}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={config.ports.apiserver}",
        f"--tls-cert-file={pki.cert('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca}",
        "--authorization-mode=Node,RBAC",
        # Beside the default ones (PodSecurity, LimitRanger, ResourceQuota, ServiceAccount, the
        # webhooks, ...): AlwaysPullImages rewrites every container, the injected ones too.
        "--enable-admission-plugins=NodeRestriction,AlwaysPullImages",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        f"--service-cluster-ip-range={config.service_cidr}",
        "--allow-privileged=true",
        f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca}",
        "--kubelet-preferred-address-types=InternalIP",
        "--endpoint-reconciler-type=none",
        f"--cert-dir={config.path('apiserver-certs')}",
        "--profiling=false",
        "--v=1",
    ]


def kube_controller_manager(
    tools: Tools, config: Config, pki: ClusterPki, kubeconfig: Path
) -> list[str]:
    return [
        str(tools.binary("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_private}",
        f"--root-ca-file={pki.ca}",
        f"--cluster-signing-cert-file={pki.ca}",
        f"--cluster-signing-key-file={pki.key('ca')}",
        f"--service-cluster-ip-range={config.service_cidr}",
        f"--cluster-name={config.name}",
        "--controllers=*",
        "--secure-port=0",
        "--profiling=false",
        "--v=1",
    ]
