"""The CA, minted leaves and the bounded cache."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from intercept_proxy.pki import CertificateAuthority, LeafCache, PkiError


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate("test CA")


def test_leaf_has_only_its_name_short_validity_backdating_and_server_auth(ca):
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    leaf = ca.issue(["api.github.com"], validity=dt.timedelta(hours=6), now=now)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.github.com"]
    assert cert.not_valid_before_utc == now - dt.timedelta(minutes=15)
    assert cert.not_valid_after_utc == now + dt.timedelta(hours=6)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)


def _ca_with_another_key_identifier(tmp_path) -> CertificateAuthority:
    """A CA made elsewhere: its key identifier is not the SHA-1 of its key (Helm's genCA, built
    with Go >= 1.25, uses truncated SHA-256; any issuer may use its own)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=made elsewhere")
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(b"\x01" * 20), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "other.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "other.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertificateAuthority.load(tmp_path / "other.crt", tmp_path / "other.key")


@pytest.mark.parametrize("made_elsewhere", [False, True], ids=["ours", "made-elsewhere"])
def test_leaf_verifies_with_openssl(ca, tmp_path, made_elsewhere):
    if made_elsewhere:
        ca = _ca_with_another_key_identifier(tmp_path)
    leaf = ca.issue(["files.pythonhosted.org"])
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "files.pythonhosted.org",
            "-CAfile",
            tmp_path / "ca.pem",
            tmp_path / "leaf.pem",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_long_names_get_no_common_name(ca):
    name = ".".join(["a" * 60] * 3) + ".test"
    cert = x509.load_pem_x509_certificate(ca.issue([name]).cert_pem)
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_ca_files_modes_and_round_trip(ca, tmp_path):
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "sub" / "ca.key"
    ca.write(cert_path, key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    loaded = CertificateAuthority.load(cert_path, key_path)
    assert loaded.cert == ca.cert
    assert b"PRIVATE KEY" not in cert_path.read_bytes()


def test_load_or_generate_creates_once(tmp_path):
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "ca.key"
    first = CertificateAuthority.load_or_generate(cert_path, key_path)
    again = CertificateAuthority.load_or_generate(cert_path, key_path)
    assert first.cert == again.cert


def test_rsa_ca(tmp_path):
    ca = CertificateAuthority.generate(key_type="rsa-2048")
    leaf = ca.issue(["pypi.org"])
    x509.load_pem_x509_certificate(leaf.cert_pem).verify_directly_issued_by(ca.cert)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d, ca, other: (d / "c").write_text("junk"), "cannot load the CA certificate"),
        (lambda d, ca, other: (d / "k").write_text("junk"), "cannot load the CA private key"),
        (lambda d, ca, other: (d / "k").write_bytes(other.key_pem()), "does not belong"),
    ],
)
def test_load_errors_name_the_file(ca, tmp_path, setup, message):
    ca.write(tmp_path / "c", tmp_path / "k")
    setup(tmp_path, ca, CertificateAuthority.generate())
    with pytest.raises(PkiError, match=message):
        CertificateAuthority.load(tmp_path / "c", tmp_path / "k")


def test_leaf_certificate_cannot_be_a_ca(ca, tmp_path):
    leaf = ca.issue(["pypi.org"])
    (tmp_path / "c").write_bytes(leaf.cert_pem)
    (tmp_path / "k").write_bytes(leaf.key_pem)
    with pytest.raises(PkiError, match="not a CA certificate"):
        CertificateAuthority.load(tmp_path / "c", tmp_path / "k")


def test_cache_is_bounded_in_entries_lru(ca):
    cache = LeafCache(ca, max_entries=3)
    for name in ("a.test", "b.test", "c.test"):
        cache.get(name)
    cache.get("a.test")  # most recently used
    cache.get("d.test")  # evicts b
    assert "b.test" not in cache
    assert all(n in cache for n in ("a.test", "c.test", "d.test"))
    assert (len(cache), cache.minted, cache.evicted) == (3, 4, 1)


def test_cache_is_bounded_in_age(ca):
    now = [0.0]
    cache = LeafCache(ca, validity=dt.timedelta(hours=2), clock=lambda: now[0])
    first = cache.get("a.test")
    now[0] = 3599.0
    assert cache.get("a.test") is first
    now[0] = 3600.0  # half of the validity: renewed
    assert cache.get("a.test") is not first
    assert cache.minted == 2


def test_flood_of_names_keeps_memory_bounded(tmp_path):
    """Mint 5,000 distinct names through a 256-entry cache in a fresh process; report RSS."""
    script = """
import resource, sys
from intercept_proxy.pki import CertificateAuthority, LeafCache
cache = LeafCache(CertificateAuthority.generate(), max_entries=256)
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(1000): cache.get(f"warm{i}.flood.test")
after_1k = rss()
for i in range(4000): cache.get(f"host{i}.flood.test")
print(len(cache), cache.evicted, after_1k, rss())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    size, evicted, rss_1k, rss_5k = map(int, out.stdout.split())
    print(
        f"peak RSS after 1,000 names {rss_1k / 1024:.1f} MiB, after 5,000 {rss_5k / 1024:.1f} MiB"
    )
    assert size == 256
    assert evicted == 5000 - 256
    # 4,000 more names than the first thousand: growth must not scale with them (~4 KB each).
    assert rss_5k - rss_1k < 4 * 1024
