"""pushd's VAPID key pair (RFC 8292): load, generate, and the public key browsers need.

The private key is a P-256 key in a PEM file named by ``webpush.vapid_private_key_file``;
the public key, base64url of the uncompressed point (65 bytes, 87 characters), is what
a page passes to ``PushManager.subscribe({applicationServerKey})`` and what Kamailio
advertises as ``Feature-Caps: ...;+sip.vapid="<key>"`` (PUSHGATE_VAPID_PUBLIC_KEY).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class VapidKeyError(ValueError):
    """The key file is unusable; the message says why (the caller names file and key)."""


def load_private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM bytes. Raises :class:`VapidKeyError`."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise VapidKeyError("is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyError("is not a P-256 (prime256v1) key, as VAPID (ES256) needs")
    return key


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The application server key: base64url (no padding) of the uncompressed point."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def generate(path: Path) -> ec.EllipticCurvePrivateKey:
    """Write a new P-256 key to ``path`` (PKCS#8 PEM, mode 0600); never overwrites."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return key
