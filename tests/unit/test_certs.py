"""testkit.certs: the test PKI verifies strictly, and a second call reuses it."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testkit.certs import TestPki, make_test_pki


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki", key_id="ABCDE12345", team_id="TEAM123456")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str) -> ssl.SSLObject:
    """A TLS handshake in memory: no sockets needed to prove the chain verifies."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.do_handshake()
    server.do_handshake()
    return server


def test_files_and_ids(pki: TestPki) -> None:
    assert pki.apns_key.name == "AuthKey_ABCDE12345.p8"
    assert pki.apns_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    key = load_pem_private_key(pki.apns_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert (pki.key_id, pki.team_id, pki.bundle) == ("ABCDE12345", "TEAM123456", "com.example.app")
    assert pki.apns_key.stat().st_mode & 0o077 == 0


def test_server_leaf_has_the_extensions_strict_verifiers_want(pki: TestPki) -> None:
    cert = _cert(pki.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    for ext in (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier, x509.KeyUsage):
        cert.extensions.get_extension_for_class(ext)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_client_certificate_names_the_topic_like_apple(pki: TestPki) -> None:
    text = pki.client_cert.read_text()
    cert = _cert(pki.client_cert)

    assert "BEGIN PRIVATE KEY" in text  # certificate and key in one file
    assert cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == "com.example.app"
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "Apple VoIP Services: com.example.app"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_with_strict_verification_and_client_cert(pki: TestPki, host: str) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.load_verify_locations(pki.ca_cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.load_cert_chain(pki.client_cert)

    server = _handshake(server_ctx, client_ctx, host)

    assert server.getpeercert() is not None


def test_second_call_reuses_the_files(pki: TestPki) -> None:
    before = {p: p.read_bytes() for p in pki.directory.iterdir()}

    again = make_test_pki(pki.directory, key_id="ABCDE12345", team_id="TEAM123456")

    assert again == pki
    assert {p: p.read_bytes() for p in pki.directory.iterdir()} == before


def test_changed_ids_or_lost_files_regenerate(pki: TestPki) -> None:
    old_ca = pki.ca_cert.read_bytes()
    pki.server_key.unlink()

    repaired = make_test_pki(pki.directory, key_id="ABCDE12345", team_id="TEAM123456")
    other = make_test_pki(pki.directory, key_id="OTHER12345", team_id="TEAM123456")

    assert repaired.server_key.is_file()
    assert repaired.ca_cert.read_bytes() != old_ca  # one consistent set, all re-signed
    assert other.apns_key.name == "AuthKey_OTHER12345.p8" and other.apns_key.is_file()
