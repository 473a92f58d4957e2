"""Pushgate's settings (``PUSHGATE_*`` #!define values of pushgate.cfg) and the log line."""

from __future__ import annotations

import time
from dataclasses import dataclass

import KSR

from kemi import metrics
from pushgate.flood import Limits


def define(name: str, default: str) -> str:
    """A cfg #!define value (strings come back with their quotes)."""
    value = KSR.pv.get(f"$def({name})")
    return default if value is None else str(value).strip('"')


def define_int(name: str, default: int) -> int:
    raw = define(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"pushgate: #!define {name} must be a whole number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    hold_timeout: int
    secret: str
    providers: frozenset[str]
    pn_min_expires: int
    notice_ttl: int
    cancel_grace: int
    msg_preview: bool
    msg_store_ttl: int
    metrics_allow: frozenset[str]
    limits: Limits
    edge: bool = False
    """Edge mode (edge.cfg, docs/edge.md): the registrar is the upstream, not this Kamailio."""
    flow_secret: str = ""
    """Edge mode: outbound's ``flow_token_secret`` (PUSHGATE_EDGE_FLOW_SECRET)."""
    shm_reserve: int = 0
    """Bytes of shared memory that must stay free to hold a new call (kemi/capacity.py)."""
    vapid_public_key: str = ""
    """pushd's VAPID public key (PUSHGATE_VAPID_PUBLIC_KEY), advertised to webpush bindings."""
    wake_shm: int = 0
    """Bytes of shared memory kept free for each held call's wake-up (kemi/capacity.py)."""

    @classmethod
    def from_cfg(cls) -> Settings:
        return cls(
            hold_timeout=define_int("PUSHGATE_HOLD_TIMEOUT", 30),
            secret=define("PUSHGATE_SECRET", ""),
            providers=frozenset(
                p.strip() for p in define("PUSHGATE_PROVIDERS", "apns,fcm").split(",") if p.strip()
            ),
            pn_min_expires=define_int("PUSHGATE_MIN_EXPIRES", 150),
            notice_ttl=define_int("PUSHGATE_NOTICE_TTL", 60),
            cancel_grace=define_int("PUSHGATE_CANCEL_GRACE", 30),
            msg_preview=define("PUSHGATE_MSG_PREVIEW", "0") == "1",
            msg_store_ttl=define_int("PUSHGATE_MSG_STORE_TTL", 604800),
            metrics_allow=frozenset(
                ip.strip()
                for ip in define("PUSHGATE_METRICS_ALLOW", "127.0.0.1").split(",")
                if ip.strip()
            ),
            limits=Limits(
                max_held=define_int("PUSHGATE_MAX_HELD", 4),
                device_pushes=define_int("PUSHGATE_DEVICE_PUSHES", 6),
                caller_pushes=define_int("PUSHGATE_CALLER_PUSHES", 3),
                window=define_int("PUSHGATE_PUSH_WINDOW", 60),
            ),
            edge=KSR.pv.get("$def(PUSHGATE_EDGE)") is not None,
            flow_secret=define("PUSHGATE_EDGE_FLOW_SECRET", ""),
            shm_reserve=define_int("PUSHGATE_SHM_RESERVE", 16) * 2**20,
            vapid_public_key=define("PUSHGATE_VAPID_PUBLIC_KEY", ""),
            wake_shm=define_int("PUSHGATE_WAKE_SHM", 25) * 2**10,
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
