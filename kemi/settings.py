"""kamailio.cfg settings (#!define values) as the routing reads them, and the log line."""

from __future__ import annotations

import time
from dataclasses import dataclass

import KSR

from kemi import metrics


def define(name: str, default: str) -> str:
    """A cfg #!define value (strings come back with their quotes)."""
    value = KSR.pv.get(f"$def({name})")
    return default if value is None else str(value).strip('"')


@dataclass(frozen=True)
class Settings:
    domain: str
    hold_timeout: int
    secret: str
    reg_auth: bool
    providers: frozenset[str]
    pn_min_expires: int
    notice_ttl: int
    cancel_grace: int
    metrics_allow: frozenset[str]
    msg_preview: bool

    @classmethod
    def from_cfg(cls) -> Settings:
        return cls(
            domain=define("SIP_DOMAIN", "pushgate.test"),
            hold_timeout=int(define("HOLD_TIMEOUT", "30")),
            secret=define("PUSHD_SECRET", ""),
            reg_auth=define("REG_AUTH", "1") == "1",
            providers=frozenset(define("PN_PROVIDERS", "apns,fcm").split(",")),
            pn_min_expires=int(define("PN_MIN_EXPIRES", "150")),
            notice_ttl=int(define("NOTICE_TTL", "60")),
            cancel_grace=int(define("CANCEL_GRACE", "30")),
            metrics_allow=frozenset(
                ip.strip() for ip in define("METRICS_ALLOW", "127.0.0.1").split(",") if ip.strip()
            ),
            msg_preview=define("MSG_PREVIEW", "0") == "1",
        )


def log(event: str, **fields: object) -> None:
    """One timeline line (grep 'pushgate:' in the log), counted in the metrics too."""
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    KSR.info(f"pushgate: t={time.time():.3f} event={event} {parts}\n")
    metrics.observe(event, fields)


def reply_reason(code: int, reason: str, text: str) -> None:
    """Stateful reply with an RFC 3326 Reason saying why."""
    KSR.hdr.append_to_reply(f'Reason: SIP;cause={code};text="{text}"\r\n')
    KSR.tm.t_reply(code, reason)
