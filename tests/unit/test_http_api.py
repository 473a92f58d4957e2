"""pushd HTTP API, the pure parts: request heads and push bodies become answers or HttpError."""

from __future__ import annotations

import pytest

from pushd.http_api import MAX_BODY, HttpError, parse_head, push_message


@pytest.mark.parametrize("value", ["\xb2", "\xb9\xb3", "1_0", "+5", "-1", " "])
def test_content_length_that_is_not_ascii_digits_is_a_400(value: str) -> None:
    # latin-1 heads can carry "²": str.isdigit() says yes, int() then raises ValueError,
    # which no handler answered (and /v1/health reads it before any token check).
    head = parse_head(
        f"GET /v1/health HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode("latin-1")
    )
    with pytest.raises(HttpError) as err:
        _ = head.content_length
    assert (err.value.status, err.value.field) == (400, "Content-Length")


def test_content_length_digits() -> None:
    head = parse_head(b"POST /v1/push HTTP/1.1\r\nContent-Length: 42\r\n\r\n")
    assert head.content_length == 42


@pytest.mark.parametrize("body", [b"[" * MAX_BODY, b'{"a":' * 3000 + b"1" + b"}" * 3000])
def test_deeply_nested_json_is_invalid_json(body: bytes) -> None:
    # json.loads raises RecursionError (not a ValueError) past ~1000 levels.
    with pytest.raises(HttpError) as err:
        push_message(body, now=0.0)
    assert (err.value.status, err.value.error) == (400, "invalid JSON")


@pytest.mark.parametrize("name", ["deadline", "ttl"])
def test_a_number_too_big_for_a_float_is_a_400_naming_it(name: str) -> None:
    # Found by tests/unit/test_hostile_http_api.py: float(10**400) raised OverflowError,
    # which no handler answered: the connection closed without a response.
    body = f'{{"kind":"call","provider":"fcm","prid":"t","param":"p","{name}":1{"0" * 400}}}'
    with pytest.raises(HttpError) as err:
        push_message(body.encode(), now=1e9)
    assert (err.value.status, err.value.field) == (400, name)
