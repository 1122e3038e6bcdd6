"""The cluster's own PKI: one CA signs every serving and client certificate, and a separate key
pair signs service account tokens. Written once into `pki/` of the state dir (keys 0600).

Files (NAME.crt and NAME.key) and what they are:
- ca: the cluster CA, trusted by the API server (clients), etcd, the node and kubeconfigs;
- apiserver: kube-apiserver's serving certificate; SANs 127.0.0.1, ::1, localhost, kubernetes,
  kubernetes.default, kubernetes.default.svc(.DOMAIN) and the first service IP;
- etcd-server: etcd's client and peer ports (127.0.0.1, localhost); apiserver-etcd-client;
- admin (O=system:masters): the printed kubeconfig;
- controller-manager (system:kube-controller-manager);
- scheduler (system:kube-scheduler): the node agent's binder (there is no scheduler);
- node (system:node:NODE, O=system:nodes): the node agent, held by the Node authorizer and
  NodeRestriction like a kubelet; node-serving: its log endpoint (127.0.0.1, NODE);
- apiserver-kubelet-client: the API server at the node's log endpoint (`kubectl logs`);
- injection-policy-reader: the node agent reading the chart's injection ClusterPolicies, and
  for pods that ask for the node, their namespace (its Pod Security level) and DaemonSet;
- kube-proxy (system:kube-proxy, bound to system:node-proxier by the API server's own policy);
- coredns (system:coredns, bound by the cluster to a role reading Services, EndpointSlices, pods
  and namespaces: cluster/dns.py);
- sa.key, sa.pub: the service account token signing key pair.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from intercept_proxy.pki.ca import CertificateAuthority
from intercept_proxy.pki.files import write_private, write_public

VALIDITY = dt.timedelta(days=365)
ADMIN_USER = "intercept-cluster-admin"
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
POLICY_READER_USER = "intercept-cluster:injection-policy-reader"


@dataclass(frozen=True)
class Subject:
    file: str
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def subjects(node: str, service_ip: str, domain: str) -> list[Subject]:
    service_names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    return [
        Subject(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=("localhost", *service_names, f"kubernetes.default.svc.{domain}"),
            ips=("127.0.0.1", "::1", service_ip),
        ),
        Subject(
            "etcd-server",
            "etcd",
            server=True,
            client=True,
            dns=("localhost",),
            ips=("127.0.0.1", "::1"),
        ),
        Subject("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        Subject("admin", ADMIN_USER, ("system:masters",), client=True),
        Subject("controller-manager", "system:kube-controller-manager", client=True),
        Subject("scheduler", "system:kube-scheduler", client=True),
        Subject("node", f"system:node:{node}", ("system:nodes",), client=True),
        Subject("kube-proxy", "system:kube-proxy", client=True),
        Subject("coredns", "system:coredns", client=True),
        Subject(
            "node-serving",
            f"system:node:{node}",
            ("system:nodes",),
            server=True,
            dns=(node,),
            ips=("127.0.0.1",),
        ),
        Subject("apiserver-kubelet-client", KUBELET_CLIENT_USER, client=True),
        Subject("injection-policy-reader", POLICY_READER_USER, client=True),
    ]


def _name(common_name: str, organizations: Sequence[str]) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(ca: CertificateAuthority, subject: Subject) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of `subject`, signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * subject.server
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] * subject.client
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject.common_name, subject.organizations))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(min(now + VALIDITY, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in subject.dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in subject.ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class ClusterPki:
    """The files of the PKI in `directory`: `NAME.crt` and `NAME.key` for each subject."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")

    @property
    def sa_public(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def sa_private(self) -> Path:
        return self.dir / "sa.key"

    def create(self, node: str, service_ip: str, domain: str) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca = CertificateAuthority.generate("intercept-cluster CA", validity=VALIDITY)
        ca.write(self.ca, self.key("ca"))
        for subject in subjects(node, service_ip, domain):
            cert, key = issue(ca, subject)
            write_private(self.key(subject.file), key)
            write_public(self.cert(subject.file), cert)
        sa = ec.generate_private_key(ec.SECP256R1())
        write_private(
            self.sa_private,
            sa.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_public(
            self.sa_public,
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
