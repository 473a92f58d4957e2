"""pushd HTTP API, the pure part: push bodies become channel messages or HttpError."""

from __future__ import annotations

import pytest

from pushd.http_api import MAX_BODY, HttpError, push_message


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
