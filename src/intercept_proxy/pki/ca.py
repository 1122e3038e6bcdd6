"""A certificate authority that signs short-lived leaf certificates for host names."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from intercept_proxy.pki.files import write_private, write_public

KEY_TYPES = ("ec-p256", "rsa-2048")
DEFAULT_CA_NAME = "intercept-proxy sandbox CA"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PkiError(Exception):
    """A CA that cannot be loaded or used; the message names the file and the problem."""


@dataclass(frozen=True)
class Leaf:
    """A minted leaf: its PEM certificate and PEM private key."""

    names: tuple[str, ...]
    cert_pem: bytes
    key_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime


def generate_key(key_type: str = "ec-p256") -> SigningKey:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise PkiError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: SigningKey

    @classmethod
    def generate(
        cls,
        common_name: str = DEFAULT_CA_NAME,
        *,
        key_type: str = "ec-p256",
        validity: dt.timedelta = dt.timedelta(days=365),
    ) -> CertificateAuthority:
        key = generate_key(key_type)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "intercept-proxy"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        now = _now()
        public_key = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as e:
            raise PkiError(f"{cert_path}: cannot load the CA certificate: {e}") from e
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise PkiError(f"{key_path}: cannot load the CA private key: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise PkiError(f"{key_path}: only EC and RSA CA keys are supported")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise PkiError(f"{key_path}: the private key does not belong to {cert_path}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise PkiError(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE missing)")
        return cls(cert, key)

    @classmethod
    def load_or_generate(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """Load the CA at these paths, or create one there when neither file exists."""
        if not cert_path.exists() and not key_path.exists():
            ca = cls.generate()
            ca.write(cert_path, key_path)
            return ca
        return cls.load(cert_path, key_path)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate world-readable and the key readable by its owner only."""
        write_private(key_path, self.key_pem())
        write_public(cert_path, self.cert_pem)

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The CA's own key identifier, as its certificate states it: CAs made elsewhere (Helm's
        genCA, cert-manager) derive it in other ways (Go >= 1.25: truncated SHA-256), and a
        verifier matches the two as written."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)

    def issue(
        self,
        names: Sequence[str],
        *,
        validity: dt.timedelta = dt.timedelta(hours=12),
        backdate: dt.timedelta = dt.timedelta(minutes=15),
        now: dt.datetime | None = None,
    ) -> Leaf:
        """Mint a serverAuth leaf whose SANs are exactly `names` (already validated host names)."""
        if not names:
            raise PkiError("a leaf certificate needs at least one name")
        key = ec.generate_private_key(ec.SECP256R1())
        start = (now or _now()) - backdate
        end = start + backdate + validity
        end = min(end, self.cert.not_valid_after_utc)
        # CN is limited to 64 characters; SAN is what clients check, so CN is only decoration.
        subject = (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
            if len(names[0]) <= 64
            else x509.Name([])
        )
        public_key = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                critical=len(subject) == 0,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return Leaf(tuple(names), cert_pem, key_pem, start, end)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
