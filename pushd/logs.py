"""Logging for pushd: one line per event on stderr, tokens shortened, secrets redacted.

Text lines read ``2024-11-23T10:00:00.123Z INFO  link: connected to kamailio ...``;
``format: json`` gives one JSON object per line with the same fields. Device tokens are
personal data and long: log them through :func:`short_token`. Secrets are never passed
to a logger; :class:`RedactFilter` is the safety net if one slips into an exception text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

_PREFIX = "pushd."


def short_token(token: str, keep: int = 8) -> str:
    """``a1b2c3d4…(64)``: enough to correlate log lines, not enough to push to the device."""
    if len(token) <= keep:
        return "…" if token else ""
    return f"{token[:keep]}…({len(token)})"


def _component(name: str) -> str:
    return name[len(_PREFIX) :] if name.startswith(_PREFIX) else name


def _timestamp(created: float) -> str:
    ms = int((created % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback of ``record``: :class:`RedactFilter`'s redacted copy when it made one."""
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return ""


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<5} "
            f"{_component(record.name)}: {record.getMessage()}"
        )
        exc = _exception_text(self, record)
        if exc:
            line += "\n" + exc
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "component": _component(record.name),
            "msg": record.getMessage(),
        }
        exc = _exception_text(self, record)
        if exc:
            obj["exc"] = exc
        return json.dumps(obj, ensure_ascii=False)


_PLAIN = logging.Formatter()


class RedactFilter(logging.Filter):
    """Replaces any known secret in a finished message, and in its traceback, by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Very short "secrets" would mangle ordinary words; they are not worth hiding anyway.
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        msg = record.getMessage()
        redacted = self._redact(msg)
        if redacted != msg:
            record.msg, record.args = redacted, None
        if record.exc_info:
            # The formatters append the traceback after this filter ran; exception texts
            # (a DSN in a driver error, say) are where a secret is most likely to slip in.
            text = record.exc_text or _PLAIN.formatException(record.exc_info)
            record.exc_text = self._redact(text)
        return True

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup(
    level: str = "info",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Route the ``pushd`` logger tree (and warnings from libraries) to ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries stay at WARNING: hpack logs header values (a JWT,
    # device tokens) at DEBUG, and google-auth / urllib3 are chatty at INFO.
    root.setLevel(logging.WARNING)
    logging.getLogger("pushd").setLevel(level.upper())
