"""How pushd proves to APNs who it is: an ES256 provider token (JWT) shared by every
connection, or a client certificate in the TLS handshake.

Apple (docs/provider-errors.md, "APNs provider token"): one token per team and key, reused
across connections and refreshed between 20 and 60 minutes after it was made; more
frequent minting earns ``429 TooManyProviderTokenUpdates``, an older token
``403 ExpiredProviderToken``. Never log a token or key material.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

log = logging.getLogger("pushd.apns")

JWT_REFRESH_AFTER = 40 * 60
"""Seconds a provider token is reused. Apple: refresh no more than once per 20 minutes and
no less than once per 60; 40 keeps clear of both with some clock skew."""
JWT_FORCED_MIN_INTERVAL = 60.0
"""At most one early re-mint (after ExpiredProviderToken) per this many seconds: with a
wrong clock every token is "expired", and minting per push would add
TooManyProviderTokenUpdates to the trouble."""


class ProviderToken:
    """One ES256 provider token per (key_id, team_id), shared by all connections."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_after: float = JWT_REFRESH_AFTER,
        forced_min_interval: float = JWT_FORCED_MIN_INTERVAL,
    ) -> None:
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._clock = clock
        self._refresh_after = refresh_after
        self._forced_min_interval = forced_min_interval
        self._header: str | None = None
        self._header_bytes = b""
        self._issued_at = 0.0
        self._last_forced: float | None = None
        self.generation = 0
        """How many tokens were minted so far; identifies the current one."""

    def get_header(self) -> str:
        """``bearer <JWT>``, minting a token if there is none or it is due."""
        self.header_bytes()
        assert self._header is not None
        return self._header

    def header_bytes(self) -> bytes:
        """:meth:`get_header` as the bytes that go on the wire."""
        now = self._clock()
        if self._header is None or now - self._issued_at >= self._refresh_after:
            self._mint(now)
        return self._header_bytes

    def current_generation(self) -> int:
        """Make sure a token exists, and say which one the next request will carry."""
        self.header_bytes()
        return self.generation

    def expired(self, generation: int) -> bool:
        """APNs said ExpiredProviderToken to a request sent with token ``generation``.

        Re-mint now, unless another answer already did (concurrent requests carried the
        same token) or an early re-mint happened less than a minute ago. True if minted.
        """
        if generation != self.generation:
            return False
        now = self._clock()
        if self._last_forced is not None and now - self._last_forced < self._forced_min_interval:
            return False
        self._last_forced = now
        self._mint(now)
        return True

    def _mint(self, now: float) -> None:
        issued_at = int(now)
        token = jwt.encode(
            {"iss": self.team_id, "iat": issued_at},
            self._key,
            algorithm="ES256",
            headers={"kid": self.key_id},
        )
        self._header = f"bearer {token}"
        self._header_bytes = self._header.encode()
        self._issued_at = float(issued_at)
        self.generation += 1
        log.info("minted APNs provider token #%d (kid %s)", self.generation, self.key_id)


def load_apns_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read and check a ``.p8`` key: it must be an unencrypted P-256 private key."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"{path}: APNs keys are P-256 (ES256) keys")
    return key


def certificate_topic(cert_file: Path) -> str | None:
    """The bundle an APNs client certificate is for (its subject ``UID``), if any."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_file}: no PEM certificate ({exc})") from None
    uids = cert.subject.get_attributes_for_oid(NameOID.USER_ID)
    value = uids[0].value if uids else None
    return value if isinstance(value, str) else None


def tls_context(ca_file: Path | None, cert_file: Path | None) -> ssl.SSLContext:
    """TLS for APNs: verified server (``ca_file`` or the system store), TLS 1.2 or later,
    ALPN ``h2`` (APNs speaks only HTTP/2), and the client certificate for certificate
    auth (one PEM with the certificate and its unencrypted key). Raises at once if the
    CA or the certificate is unusable."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if cert_file is not None:
        ctx.load_cert_chain(cert_file)
    return ctx
