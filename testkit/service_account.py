"""Fake Google service-account JSON files, for pointing google-auth at a local OAuth server.

The file has every field a real key file has (docs/provider-errors.md, "FCM OAuth access
token"), so google-auth loads it unchanged; only ``token_uri`` points at the fake. One
RSA key is generated per process and shared by every account: generating RSA-2048 costs
tens of milliseconds and tests make many accounts.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_PROJECT_ID = "pushgate-test"
SCOPE_FCM = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass(frozen=True)
class FakeServiceAccount:
    """A written service-account file and what a fake OAuth server needs to trust it."""

    path: Path
    info: dict[str, str]
    """The JSON content, as google-auth's ``from_service_account_info`` takes it."""
    public_key: rsa.RSAPublicKey

    @property
    def project_id(self) -> str:
        return self.info["project_id"]

    @property
    def client_email(self) -> str:
        return self.info["client_email"]

    @property
    def private_key_id(self) -> str:
        return self.info["private_key_id"]


@functools.cache
def _process_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_key_pem(key: rsa.RSAPrivateKey) -> str:
    # Google's files hold PKCS#8 ("BEGIN PRIVATE KEY"), not the PKCS#1 RSA form.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account_info(
    token_uri: str, *, project_id: str = DEFAULT_PROJECT_ID, name: str = "pushd"
) -> dict[str, str]:
    """The JSON fields of a fresh account in ``project_id`` whose tokens come from ``token_uri``."""
    email = f"{name}@{project_id}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": _private_key_pem(_process_key()),
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": (
            "https://www.googleapis.com/robot/v1/metadata/x509/" + email.replace("@", "%40")
        ),
        "universe_domain": "googleapis.com",
    }


def write_service_account(
    directory: Path,
    token_uri: str,
    *,
    project_id: str = DEFAULT_PROJECT_ID,
    filename: str = "service-account.json",
) -> FakeServiceAccount:
    """Write a fresh account file into ``directory`` (mode 0600, as a real key should be)."""
    info = service_account_info(token_uri, project_id=project_id)
    path = Path(directory) / filename
    path.write_text(json.dumps(info, indent=2) + "\n")
    path.chmod(0o600)
    return FakeServiceAccount(path=path, info=info, public_key=_process_key().public_key())


def load_service_account(path: Path) -> FakeServiceAccount:
    """Read an account file (any RSA key, not only ours) so a fake server can trust it."""
    info = json.loads(Path(path).read_text())
    key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: private_key is not an RSA key")
    return FakeServiceAccount(path=Path(path), info=info, public_key=key.public_key())
