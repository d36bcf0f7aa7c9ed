"""Key material for the local kube-apiserver, generated with ``cryptography``.

Design choices:

* Two certificate authorities, like controller-runtime's envtest: one signs the serving
  certificate (the admin kubeconfig pins it, so TLS is verified rather than skipped), the
  other is the apiserver's ``--client-ca-file``. Keeping them apart means a serving
  certificate can never be replayed as a client identity.
* The admin identity is an X.509 client certificate whose organisation is
  ``system:masters``; that group is bound to ``cluster-admin`` by the RBAC bootstrap policy,
  so it works with ``--authorization-mode=RBAC`` and needs no token file.
* Certificates use ECDSA P-256 (fast to generate, accepted by Go's TLS stack). The service
  account signing key is RSA 2048, so TokenRequest issues RS256 tokens, the algorithm every
  JWT verifier understands.
* Material is created once per directory and then reused, so a restarted apiserver (or a
  ``cluster up`` after ``cluster down``) keeps accepting previously issued tokens. Leaf
  certificates close to expiry are reissued from the existing CAs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ADMIN_GROUP",
    "ADMIN_USER",
    "SERVING_SANS_DNS",
    "SERVING_SANS_IP",
    "ClientCredentials",
    "Pki",
    "ensure_pki",
    "issue_client_cert",
]

ADMIN_USER = "tandem-admin"
ADMIN_GROUP = "system:masters"
SERVING_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_SANS_IP = ("127.0.0.1", "10.0.0.1")

_CA_LIFETIME = dt.timedelta(days=3650)
_LEAF_LIFETIME = dt.timedelta(days=365)
_RENEW_BEFORE = dt.timedelta(days=7)
# Backdated so a clock that is slightly behind does not reject a freshly minted certificate.
_CLOCK_SKEW = dt.timedelta(minutes=5)

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class ClientCredentials:
    """A PEM client certificate and key for one user."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Pki:
    """File locations of all key material in a certificate directory."""

    cert_dir: Path

    @property
    def serving_ca_cert(self) -> Path:
        return self.cert_dir / "serving-ca.crt"

    @property
    def serving_ca_key(self) -> Path:
        return self.cert_dir / "serving-ca.key"

    @property
    def client_ca_cert(self) -> Path:
        return self.cert_dir / "client-ca.crt"

    @property
    def client_ca_key(self) -> Path:
        return self.cert_dir / "client-ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.cert_dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.cert_dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.cert_dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.cert_dir / "admin.key"

    @property
    def service_account_key(self) -> Path:
        return self.cert_dir / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.cert_dir / "sa.pub"

    def admin_credentials(self) -> ClientCredentials:
        return ClientCredentials(
            cert_pem=self.admin_cert.read_bytes(), key_pem=self.admin_key.read_bytes()
        )


def ensure_pki(cert_dir: Path) -> Pki:
    """Create whatever key material is missing (or expiring) in ``cert_dir``."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(cert_dir=cert_dir)

    serving_ca_new = _ensure_ca(
        cert_path=pki.serving_ca_cert, key_path=pki.serving_ca_key, name="tandem-serving-ca"
    )
    client_ca_new = _ensure_ca(
        cert_path=pki.client_ca_cert, key_path=pki.client_ca_key, name="tandem-client-ca"
    )

    if serving_ca_new or _needs_leaf(pki.serving_cert, pki.serving_key):
        ca_cert, ca_key = _load_pair(pki.serving_ca_cert, pki.serving_ca_key)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign_leaf(
            subject=_name(common_name="kube-apiserver"),
            public_key=key,
            ca_cert=ca_cert,
            ca_key=ca_key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=[x509.DNSName(d) for d in SERVING_SANS_DNS]
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in SERVING_SANS_IP],
        )
        _write_pair(pki.serving_cert, pki.serving_key, cert=cert, key=key)

    if client_ca_new or _needs_leaf(pki.admin_cert, pki.admin_key):
        creds = issue_client_cert(pki, user=ADMIN_USER, groups=[ADMIN_GROUP])
        _write_private(pki.admin_key, creds.key_pem)
        pki.admin_cert.write_bytes(creds.cert_pem)

    if not (pki.service_account_key.exists() and pki.service_account_pub.exists()):
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(pki.service_account_key, _key_pem(sa_key))
        pki.service_account_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki


def issue_client_cert(pki: Pki, *, user: str, groups: Sequence[str] = ()) -> ClientCredentials:
    """A client certificate the apiserver maps to ``user`` in ``groups``."""
    ca_cert, ca_key = _load_pair(pki.client_ca_cert, pki.client_ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_leaf(
        subject=_name(common_name=user, organizations=groups),
        public_key=key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=[],
    )
    return ClientCredentials(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key)
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(*, common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_pair(
    cert_path: Path, key_path: Path, *, cert: x509.Certificate, key: _PrivateKey
) -> None:
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, _PrivateKey]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"Unsupported key type in {key_path}: {type(key).__name__}")
    return cert, key


def _needs_leaf(cert_path: Path, key_path: Path) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return True
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - _now() < _RENEW_BEFORE


def _ensure_ca(*, cert_path: Path, key_path: Path, name: str) -> bool:
    """Create a self-signed CA unless a valid one exists; True when a new one was made."""
    if not _needs_leaf(cert_path, key_path):
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name=name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert=cert, key=key)
    return True


def _sign_leaf(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: _PrivateKey,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + _LEAF_LIFETIME, ca_cert.not_valid_after_utc))
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
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
