"""Log lines: one line, time level component message; tokens shortened; secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from pushd import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    pushd_level = logging.getLogger("pushd").level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("pushd").setLevel(pushd_level)


def test_short_token() -> None:
    assert logs.short_token("0123456789abcdef" * 4) == "01234567…(64)"
    assert logs.short_token("short") == "…"
    assert logs.short_token("") == ""


def test_text_line_shape_and_redaction(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup("info", "text", secrets=["hunter2-secret"], stream=out)
    logging.getLogger("pushd.link").info("hello %s sent", "hunter2-secret")
    logging.getLogger("pushd.link").debug("not shown")
    line = out.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO  link: hello \*\*\* sent\n", line
    ), line


def test_json_lines(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup("debug", "json", stream=out)
    logging.getLogger("pushd.dispatch").debug("x=%d", 1)
    obj = json.loads(out.getvalue())
    assert (obj["level"], obj["component"], obj["msg"]) == ("debug", "dispatch", "x=1")


def test_libraries_stay_at_warning(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup("debug", "text", stream=out)
    logging.getLogger("urllib3").info("chatter")
    logging.getLogger("h2").warning("worth seeing")
    assert "chatter" not in out.getvalue() and "h2: worth seeing" in out.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_a_traceback_is_redacted(restore_logging: None, fmt: str) -> None:
    # The filter is the safety net for secrets that slip into exception texts: the
    # traceback the formatter appends must be redacted too, not only the message.
    out = io.StringIO()
    logs.setup("info", fmt, secrets=["hunter2-secret"], stream=out)
    try:
        raise ValueError("connect failed for password=hunter2-secret")
    except ValueError:
        logging.getLogger("pushd.app").exception("cannot start")
    text = out.getvalue()
    assert "hunter2-secret" not in text
    assert "password=***" in text
    assert "Traceback" in text
