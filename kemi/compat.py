"""What differs between the Kamailio releases Pushgate runs on, in one place.

Tested on Kamailio 5.6 (Debian 12) and 6.0 (Debian 13). The running release is read once,
when Kamailio loads Pushgate (``detect()`` from the start-up checks), from ``$version(num)``
(pv module; both releases have it). Every KEMI function Pushgate calls exists with the same
parameters on both (tests/unit/test_ksr_api.py checks kemi/ against both releases' exports);
what differs in behaviour, and how Pushgate deals with it:

- tsilo ``ts_append*`` with no transaction stored for the R-URI (the ringing call ended):
  5.6 returns -1, as for an internal error, and logs an ERROR; since 5.7 it returns -2
  and logs at debug level. :meth:`Compat.ts_append_outcome` reads both.
- tmx ``t_precheck_trans`` returns -1 (6.0) instead of -1/-2 (5.6) when not a
  retransmission: only ``> 0`` is tested, the same on both.
- sl ``sl_reply_error`` may return -2/-3 (6.0, reply already sent / delayed): used only
  on error paths, its return value is not read.

Nothing here imports ``KSR`` at module level: the logic is unit-tested outside Kamailio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

TESTED = ((5, 6), (6, 0))
"""Release lines (major, minor) the test suite runs Pushgate on."""


@dataclass(frozen=True, order=True)
class Release:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> Release:
        """``5.6.3`` / ``6.0.1`` (``$version(num)``); a suffix such as ``-dev1`` is ignored."""
        m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if m is None:
            raise ValueError(f"not a Kamailio version: {text!r}")
        return cls(int(m[1]), int(m[2]), int(m[3] or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" if self.major else "(unknown)"


UNKNOWN = Release(0, 0)
"""``$version(num)`` unreadable (no pv module: the start-up checks name it as missing)."""


class Appended(Enum):
    """What ``ts_append*`` did for a device that woke during a ringing call."""

    JOINED = "joined"  # branches added to the ringing call
    NO_CALL = "no_call"  # no call stored for the AoR (any more): nothing to join
    FAILED = "failed"  # tsilo's internal error (parsing, memory)


@dataclass(frozen=True)
class Compat:
    """Pushgate's view of one Kamailio release."""

    release: Release

    @property
    def tested(self) -> bool:
        return (self.release.major, self.release.minor) in TESTED

    def ts_append_outcome(self, rc: int) -> Appended:
        if rc > 0:
            return Appended.JOINED
        if rc == -2 and self.release >= Release(5, 7):
            return Appended.NO_CALL
        if rc == -1 and self.release < Release(5, 7):
            # 5.6 cannot tell "no call" from an error; Pushgate appends only for AoRs with
            # a ringing call, so the call ended in between (tsilo logged an ERROR).
            return Appended.NO_CALL
        return Appended.FAILED


_running: Compat | None = None


def detect() -> Compat:
    """The running Kamailio's release, read once (``$version(num)``) and kept."""
    global _running
    if _running is None:
        import KSR  # Kamailio's embedded module: there only

        try:
            release = Release.parse(str(KSR.pv.get("$version(num)") or ""))
        except ValueError:
            release = UNKNOWN
        _running = Compat(release)
    return _running
