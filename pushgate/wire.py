"""Messages on the Kamailio <-> pushd channel (see docs/kamailio-pushd-protocol.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
FINAL_VERDICTS = frozenset({"delivered", "delete_token", "config_error", "give_up"})


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
    def parse(cls, text: str) -> HoldId:
        try:
            index, label, n = (int(x) for x in text.split(":"))
        except ValueError:
            raise WireError(f"id: expected '<index>:<label>:<n>', got {text!r}") from None
        return cls(index=index, label=label, n=n)


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
    return json.dumps(
        {
            "type": "push",
            "id": str(hold_id),
            "kind": kind,
            "provider": provider,
            "prid": prid,
            "param": param,
            "aor": aor,
            "ruid": ruid,
            "instance": instance,
            "deadline": round(deadline, 3),
            "data": data,
        },
        separators=(",", ":"),
    )


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
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("type: missing")
    return msg


def parse_result(msg: dict[str, Any]) -> Result:
    verdict = msg.get("verdict")
    if verdict not in FINAL_VERDICTS:
        raise WireError(f"verdict: expected one of {sorted(FINAL_VERDICTS)}, got {verdict!r}")
    status = msg.get("status")
    ms = msg.get("ms", 0.0)
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        raise WireError(f"ms: expected a number, got {ms!r}")
    return Result(
        hold_id=HoldId.parse(str(msg.get("id", ""))),
        verdict=verdict,
        status=status if isinstance(status, int) else None,
        reason=str(msg["reason"]) if msg.get("reason") is not None else None,
        aor=str(msg.get("aor", "")),
        ruid=str(msg.get("ruid", "")),
        ms=float(ms),
    )
