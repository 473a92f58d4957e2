"""How to reach each push service: the one settings class per provider.

``pushd.config`` builds these from the YAML file (with errors naming file and key) and
the providers (``apns.py``, ``fcm.py``, ``webpush.py``) take them as they are. This module
imports nothing beyond the standard library and :mod:`pushd.model`, so the config loader,
``--check-config`` and the tests load it without h2, google-auth or pywebpush.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pushd.model import Environment


@dataclass(frozen=True)
class ApnsSettings:
    """How to reach APNs (paths already resolved against the config file).

    The config loader checks every value first and names the key at fault; the checks in
    ``__post_init__`` guard settings built directly (tests, bench).
    """

    auth: Literal["token", "certificate"]
    """``token`` (.p8 key, JWT) or ``certificate`` (client certificate)."""
    key_file: Path | None
    """Token auth: Apple's ``AuthKey_<KEYID>.p8``."""
    key_id: str | None
    team_id: str | None
    cert_file: Path | None
    """Certificate auth: one PEM holding the certificate and its unencrypted key."""
    default_environment: Environment
    """For bindings that do not say (plain ``pn-provider=apns``); ``apns.dev`` always means
    sandbox. The dispatcher applies it when it builds a PushRequest; the provider sends to
    ``request.environment`` as given."""
    host: str | None
    """Send both environments to this host instead of Apple's (the fake APNs in tests)."""
    port: int = 443
    ca_file: Path | None = None
    """CA bundle to verify the server with; None = the system store."""
    max_connections: int = 10
    """HTTP/2 connections per environment."""
    timeout: float = 10.0
    """Seconds to wait for an answer (capped by the push deadline), for a connection to
    open, and for a PING's answer."""
    idle_timeout: float = 3600.0
    """Close a connection that has carried no push for this long. Apple asks for
    connections kept open across pushes, not one per push."""
    keepalive: float = 60.0
    """PING a connection after this many seconds without a byte from APNs (0 = never), so
    a connection that died silently (NAT, firewall) is replaced before a call needs it."""

    def __post_init__(self) -> None:
        if self.auth == "token":
            missing = [
                name
                for name, value in (
                    ("key_file", self.key_file),
                    ("key_id", self.key_id),
                    ("team_id", self.team_id),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"apns token auth needs {', '.join(missing)}")
        elif self.auth == "certificate":
            if self.cert_file is None:
                raise ValueError("apns certificate auth needs cert_file")
        else:
            raise ValueError(f"apns auth must be 'token' or 'certificate', not {self.auth!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"apns port out of range: {self.port}")
        if self.max_connections < 1:
            raise ValueError("apns max_connections must be at least 1")
        if self.timeout <= 0:
            raise ValueError("apns timeout must be positive")
        if self.idle_timeout <= 0:
            raise ValueError("apns idle_timeout must be positive")
        if self.keepalive < 0:
            raise ValueError("apns keepalive must be 0 (off) or positive")


@dataclass(frozen=True)
class FcmSettings:
    """How to reach FCM."""

    service_account_file: Path
    token_uri: str | None = None
    """Overrides the key file's token_uri (tests, egress proxies)."""
    base_url: str = "https://fcm.googleapis.com"
    timeout: float = 10.0
    """Per-attempt HTTP timeout in seconds, further capped by the push deadline."""
    max_workers: int = 8
    """Concurrent sends (threads, and pooled HTTP connections)."""
    project_id: str | None = None
    """From the service account file, for the start-up summary; known only when the
    config loader checked the files. Sends take the project from ``PushRequest.topic``."""


@dataclass(frozen=True)
class WebpushSettings:
    """How to reach Web Push services."""

    vapid_private_key_file: Path
    subject: str
    """RFC 8292 ``sub``: a ``mailto:`` or ``https:`` contact for the push service operator."""
    ca_file: Path | None = None
    """Trust these CAs instead of the system's (tests, TLS-inspecting egress proxies)."""
    timeout: float = 10.0
    """Per-attempt HTTP timeout in seconds, further capped by the push deadline."""
    max_connections: int = 64
    public_key: str | None = None
    """base64url VAPID public key, for the start-up summary; known only when the config
    loader checked the files."""
