"""The sandbox CA and the leaf certificates it mints on demand."""

from intercept_proxy.pki.ca import CertificateAuthority, Leaf, PkiError
from intercept_proxy.pki.cache import LeafCache

__all__ = ["CertificateAuthority", "Leaf", "LeafCache", "PkiError"]
