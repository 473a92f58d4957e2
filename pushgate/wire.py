"""Messages on the Kamailio <-> pushd channel (see docs/kamailio-pushd-protocol.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_MESSAGE = 60_000
"""Bytes of a push message, under pushd's 64 KiB netstring frame (pushd.netstring)."""
MAX_TEXT = 256
"""Characters of a push's ``instance`` and of each ``data`` value: they come from the
phone's REGISTER and the caller's INVITE (a display name of 25,000 "é" is 150 kB of
JSON, past pushd's 64 KiB frame: pushd dropped the connection, Kamailio resent the push
on the next one, and no push went out for anyone). APNs takes 5 KB of payload anyway."""
FINAL_VERDICTS = frozenset({"delivered", "delete_token", "config_error", "give_up"})
# Canonical unsigned decimals only: " 1", "+1", "01", "1_0" and "\u0663" are ints to int()
# but not the id Kamailio wrote (results are matched by the id's text, too).
_HOLD_ID = re.compile(r"(0|[1-9][0-9]{0,19}):(0|[1-9][0-9]{0,19}):(0|[1-9][0-9]{0,19})", re.ASCII)


class WireError(ValueError):
    """A message on the channel is malformed; names the field."""


@dataclass(frozen=True, kw_only=True)
class HoldId:
    """Identifies one push for one held transaction: tm index/label plus a branch number."""

    index: int
    label: int
    n: int = 0

    @property
    def tx_key(self) -> str:
        return f"{self.index}:{self.label}"

    def __str__(self) -> str:
        return f"{self.index}:{self.label}:{self.n}"

    @classmethod
    def parse(cls, text: object) -> HoldId:
        match = _HOLD_ID.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise WireError(f"id: expected '<index>:<label>:<n>', got {_short(text)}")
        index, label, n = (int(x) for x in match.groups())
        return cls(index=index, label=label, n=n)


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT]


def push_message(
    *,
    hold_id: HoldId,
    kind: str,
    provider: str,
    prid: str,
    param: str,
    aor: str,
    ruid: str,
    instance: str,
    deadline: float,
    data: dict[str, str],
) -> str:
    """The ``push`` message: ``instance`` and ``data`` values cut to :data:`MAX_TEXT`
    characters (prid, param and aor were bounded when the phone registered). A message
    pushd would refuse as a whole is a :class:`WireError` here, never sent."""
    text = json.dumps(
        {
            "type": "push",
            "id": str(hold_id),
            "kind": kind,
            "provider": provider,
            "prid": prid,
            "param": param,
            "aor": aor,
            "ruid": ruid,
            "instance": _bounded(instance),
            "deadline": round(deadline, 3),
            "data": {k: _bounded(v) for k, v in data.items()},
        },
        separators=(",", ":"),
    )
    if len(text) > MAX_MESSAGE:  # ASCII: characters are bytes
        raise WireError(f"push: {len(text)} bytes, over {MAX_MESSAGE}")
    return text


def control_message(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True)
class Result:
    hold_id: HoldId
    verdict: str
    status: int | None
    reason: str | None
    aor: str
    ruid: str
    ms: float


def parse_message(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc.msg}") from None
    except ValueError:
        # A number of over 4300 digits: int() refuses it (CVE-2020-10735's limit).
        raise WireError("not JSON: a number too long to read") from None
    except RecursionError:
        # "[[[[..." nests deeper than the parser recurses; from anyone who reaches evapi.
        raise WireError("not JSON: nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("type: missing")
    return msg


def parse_result(msg: dict[str, Any]) -> Result:
    """A ``result`` from pushd. Fields that decide what Kamailio does (``id``, ``verdict``,
    ``aor``, ``ruid``) and the ones it logs must have their documented types; nothing is
    coerced from another type. Raises :class:`WireError` naming the field."""
    verdict = msg.get("verdict")
    if not isinstance(verdict, str) or verdict not in FINAL_VERDICTS:  # [..] is unhashable
        raise WireError(f"verdict: expected one of {sorted(FINAL_VERDICTS)}, got {_short(verdict)}")
    hold_id = HoldId.parse(msg.get("id"))
    status = msg.get("status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        raise WireError(f"status: expected an HTTP status or null, got {_short(status)}")
    reason = msg.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise WireError(f"reason: expected a string or null, got {_short(reason)}")
    aor, ruid = _optional_str(msg, "aor"), _optional_str(msg, "ruid")
    ms = msg.get("ms", 0.0)
    if type(ms) not in (int, float) or not 0 <= ms < 1e12:  # also NaN, inf, 10**400
        raise WireError(f"ms: expected a number, got {_short(ms)}")
    return Result(
        hold_id=hold_id,
        verdict=verdict,
        status=status,
        reason=reason,
        aor=aor,
        ruid=ruid,
        ms=float(ms),
    )


def _optional_str(msg: dict[str, Any], name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WireError(f"{name}: expected a string, got {_short(value)}")
    return value


def _short(value: object) -> str:
    """A value for an error message: repr, at most 80 characters (the log line's share)."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return "a huge number"  # repr() of one over 4300 digits raises ValueError
    try:
        text = repr(value)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= 80 else text[:77] + "..."
