"""Test PKI for the fake APNs server, generated with ``cryptography``.

One call, :func:`make_test_pki`, writes into a directory:

* ``ca.pem`` / ``ca.key``: a throw-away CA that signs everything below;
* ``server.pem`` / ``server.key``: a leaf for ``localhost`` (SAN DNS:localhost,
  IP:127.0.0.1, IP:::1). It carries SKI/AKI, KeyUsage and ExtendedKeyUsage because newer
  Pythons verify with ``VERIFY_X509_STRICT`` and reject leaves without them;
* ``AuthKey_<KEYID>.p8`` / ``AuthKey_<KEYID>.pub.pem``: an APNs token-auth P-256 key as
  Apple hands it out (PKCS#8 PEM), plus its public key for the fake to verify JWTs;
* ``apns-client.pem``: certificate *and* key in one PEM, for APNs certificate auth. Its
  subject names the topic the way Apple's certificates do (``CN=Apple VoIP Services:
  <bundle>``, ``UID=<bundle>``).

All keys are EC P-256: generation is instant, so the whole PKI takes milliseconds.
The call is idempotent: a ``pki.json`` manifest records the parameters, and files are only
rewritten when it or a file is missing, the parameters changed, or the CA is near expiry.
Files are written atomically, so concurrent test workers never read half a file.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_MANIFEST_VERSION = 1
_CA_DAYS = 3650
_LEAF_DAYS = 825
_RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True, kw_only=True)
class TestPki:
    """Where :func:`make_test_pki` put things, and the ids baked into them."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    apns_key: Path
    """``AuthKey_<KEYID>.p8``: the token-auth private key (PKCS#8 PEM)."""
    apns_public_key: Path
    client_cert: Path
    """Client certificate and its key in one PEM (APNs certificate auth)."""
    key_id: str
    team_id: str
    bundle: str

    def apns_key_pem(self) -> str:
        """The ``.p8`` content, as Apple hands it out."""
        return self.apns_key.read_text()


def make_test_pki(
    directory: Path,
    key_id: str = "KEYID12345",
    team_id: str = "TEAMID1234",
    bundle: str = "com.example.app",
) -> TestPki:
    """Create (or reuse) the test PKI in ``directory``; see the module docstring."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = _layout(directory, key_id, team_id, bundle)
    if not _is_current(pki):
        _generate(pki)
    return pki


def _layout(directory: Path, key_id: str, team_id: str, bundle: str) -> TestPki:
    return TestPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        apns_key=directory / f"AuthKey_{key_id}.p8",
        apns_public_key=directory / f"AuthKey_{key_id}.pub.pem",
        client_cert=directory / "apns-client.pem",
        key_id=key_id,
        team_id=team_id,
        bundle=bundle,
    )


def _manifest(pki: TestPki) -> dict[str, object]:
    return {
        "version": _MANIFEST_VERSION,
        "key_id": pki.key_id,
        "team_id": pki.team_id,
        "bundle": pki.bundle,
    }


def _is_current(pki: TestPki) -> bool:
    files = (
        pki.ca_cert,
        pki.ca_key,
        pki.server_cert,
        pki.server_key,
        pki.apns_key,
        pki.apns_public_key,
        pki.client_cert,
    )
    manifest = pki.directory / "pki.json"
    if not all(f.is_file() for f in (*files, manifest)):
        return False
    try:
        if json.loads(manifest.read_text()) != _manifest(pki):
            return False
        ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    except ValueError:
        return False
    return ca.not_valid_after_utc - _now() > _RENEW_BEFORE


def _generate(pki: TestPki) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, ca_cert, ca_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _client_certificate(client_key, pki, ca_cert, ca_key)
    apns_key = ec.generate_private_key(ec.SECP256R1())

    _write(pki.ca_key, _key_pem(ca_key))
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(pki.server_key, _key_pem(server_key))
    _write(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(
        pki.client_cert,
        client_cert.public_bytes(serialization.Encoding.PEM) + _key_pem(client_key),
    )
    _write(pki.apns_key, _key_pem(apns_key))
    _write(
        pki.apns_public_key,
        apns_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    # The manifest goes last: a crash half-way leaves no manifest, so the next call redoes it.
    _write(pki.directory / "pki.json", json.dumps(_manifest(pki)).encode())


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pushgate Test CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        _builder(name, name, key.public_key(), _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    return (
        _leaf_builder(name, key, ca_cert)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _client_certificate(
    key: ec.EllipticCurvePrivateKey,
    pki: TestPki,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    # Apple's push certificates carry the bundle ID as UID; APNs reads the topic
    # from there.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, pki.bundle),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple VoIP Services: {pki.bundle}"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, pki.team_id),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )
    return (
        _leaf_builder(name, key, ca_cert)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _leaf_builder(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> x509.CertificateBuilder:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        _builder(subject, ca_cert.subject, key.public_key(), _LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated an hour so a test host with a slightly slow clock still accepts it.
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600 if path.suffix in (".key", ".p8") else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
