"""Typed values shared by every part of pushd: what to push, and what came of it.

Providers (``apns.py``, ``fcm.py``) take a :class:`PushRequest` and return a
:class:`PushResult`; the classification of a provider's answer into a
:class:`Verdict` is pure and lives beside each provider (``apns_errors.py``,
``fcm_errors.py``). The verdicts and push kinds are the channel's own
(``pushgate.wire``): one vocabulary on both sides of it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from pushd.retry import MAX_RETRY_AFTER
from pushgate.wire import PushKind, Verdict

__all__ = [
    "Environment",
    "Provider",
    "ProviderName",
    "PushKind",
    "PushRequest",
    "PushResult",
    "Verdict",
]


class ProviderName(enum.StrEnum):
    """Push services pushd can deliver to (RFC 8599 ``pn-provider`` values, normalised)."""

    APNS = "apns"
    FCM = "fcm"
    WEBPUSH = "webpush"


class Environment(enum.StrEnum):
    """APNs environment; FCM has only production."""

    PRODUCTION = "production"
    SANDBOX = "sandbox"


@dataclass(frozen=True, kw_only=True)
class PushRequest:
    """One push to one device."""

    provider: ProviderName
    token: str
    """Device token (APNs, hex), registration token (FCM) or subscription URI (webpush)."""
    topic: str
    """APNs ``apns-topic`` (``<bundle>`` or ``<bundle>.voip``); FCM: the Firebase project ID."""
    kind: PushKind
    deadline: float
    """Epoch seconds after which the push is useless (APNs expiration, FCM ttl, retry cap)."""
    data: dict[str, str] = field(default_factory=dict)
    """Application payload; string values only (FCM requires it, APNs gets them as JSON)."""
    environment: Environment = Environment.PRODUCTION
    environment_pinned: bool = False
    """The binding chose the environment (``pn-provider=apns.dev``), not pushd's config:
    a BadDeviceToken then cannot be an environment mix-up worth checking."""
    collapse_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class PushResult:
    """The provider's answer to one attempt, already classified."""

    verdict: Verdict
    status: int | None = None
    """HTTP status from the provider; None when no answer came (connection error, timeout)."""
    reason: str | None = None
    """Provider reason (APNs ``reason``, FCM ``errorCode``/``status``) or local error text."""
    retry_after: float | None = None
    """Seconds the provider asked us to wait (Retry-After), if any."""
    provider_id: str | None = None
    """APNs ``apns-id`` or FCM message ``name`` on success."""
    hint: str | None = None
    """Operator-facing sentence from the provider's classifier (what to fix for a
    CONFIG_ERROR); the dispatcher logs it once per (provider, reason)."""


@dataclass(frozen=True, kw_only=True)
class Classified:
    """One provider answer as its classifier (``pushd/*_errors.py``) reads it."""

    verdict: Verdict
    reason: str | None = None
    """The provider's own reason, else ``HTTP <n>``, else ``no answer``; None on success."""
    retry_after: float | None = None
    """Seconds to wait before retrying (only for RETRY)."""
    hint: str | None = None
    """Operator-facing: what to fix (config errors) or what happened (others)."""

    @classmethod
    def retry(cls, reason: str, retry_after: float | None, minimum: float = 0.0) -> Classified:
        """RETRY after what the server asked, at least ``minimum``, at most a day."""
        if retry_after is None:
            return cls(verdict=Verdict.RETRY, reason=reason, retry_after=minimum or None)
        wait = min(max(retry_after, minimum, 0.0), MAX_RETRY_AFTER)
        return cls(verdict=Verdict.RETRY, reason=reason, retry_after=wait)

    def result(self, status: int | None = None, provider_id: str | None = None) -> PushResult:
        return PushResult(
            verdict=self.verdict,
            status=status,
            reason=self.reason,
            retry_after=self.retry_after,
            provider_id=provider_id,
            hint=self.hint,
        )


class Provider(Protocol):
    """One push service. Implementations must never block the event loop."""

    name: ProviderName

    async def send(self, request: PushRequest) -> PushResult:
        """Make one attempt; never raises for provider or network errors (they become results)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
