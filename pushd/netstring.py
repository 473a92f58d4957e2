"""Netstring framing of JSON objects, as Kamailio's evapi speaks it (sans-IO).

A frame is ``<decimal length>:<payload>,`` (djb's netstrings); the payload is one UTF-8
JSON object, written as ``pushgate.wire.encode`` writes it (ASCII). :func:`encode` builds
a frame, :class:`Decoder` turns a byte stream into objects one ``feed`` at a time.
Nothing here touches a socket.

Any framing or payload error is fatal to the stream: after one bad frame we cannot know
where the next one starts, so the connection must be dropped and re-established.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pushgate import wire

MAX_SIZE = 64 * 1024
"""Largest payload accepted (bytes). A push request is well under 2 KiB."""


class NetstringError(ValueError):
    """The byte stream is not a sequence of netstring-framed JSON objects."""


def encode(obj: Mapping[str, Any], max_size: int = MAX_SIZE) -> bytes:
    """One JSON object as a netstring frame."""
    payload = wire.encode(obj).encode("ascii")
    if len(payload) > max_size:
        raise NetstringError(f"message of {len(payload)} bytes exceeds the {max_size} byte limit")
    return b"%d:%s," % (len(payload), payload)


class Decoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get back the complete objects."""

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        # Digits needed for max_size; a longer prefix is already too big (or garbage).
        self._max_digits = len(str(max_size))
        self._broken: NetstringError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Append ``data`` and return every object completed by it (possibly none).

        Raises :class:`NetstringError` on a malformed length, a missing ``,`` terminator,
        a frame over the size limit, or a payload that is not a JSON object; once raised,
        every later call raises the same error.
        """
        if self._broken is not None:
            raise self._broken
        self._buf += data
        out: list[dict[str, Any]] = []
        try:
            while (obj := self._next()) is not None:
                out.append(obj)
        except NetstringError as exc:
            self._broken = exc
            self._buf.clear()
            raise
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def _next(self) -> dict[str, Any] | None:
        colon = self._buf.find(b":", 0, self._max_digits + 1)
        if colon < 0:
            prefix = bytes(self._buf[: self._max_digits + 1])
            if not prefix.isdigit() and prefix:
                raise NetstringError(f"bad netstring length prefix {prefix[:16]!r}")
            if len(self._buf) > self._max_digits:
                raise NetstringError(f"netstring length exceeds the {self._max_size} byte limit")
            return None
        digits = bytes(self._buf[:colon])
        if not digits.isdigit():
            raise NetstringError(f"bad netstring length prefix {digits[:16]!r}")
        if len(digits) > 1 and digits.startswith(b"0"):
            raise NetstringError(f"netstring length with leading zero {digits!r}")
        length = int(digits)
        if length > self._max_size:
            raise NetstringError(
                f"netstring of {length} bytes exceeds the {self._max_size} byte limit"
            )
        end = colon + 1 + length
        if len(self._buf) <= end:
            return None  # wait for the payload and its terminator
        if self._buf[end] != ord(","):
            raise NetstringError(f"netstring terminator is {bytes(self._buf[end : end + 1])!r}")
        payload = bytes(self._buf[colon + 1 : end])
        del self._buf[: end + 1]
        return _decode_payload(payload)


def _decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, a 5000-digit number
        raise NetstringError(f"netstring payload is not UTF-8 JSON: {exc}") from exc
    except RecursionError:
        raise NetstringError("netstring payload is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise NetstringError(f"netstring payload is a JSON {type(obj).__name__}, not an object")
    return obj
