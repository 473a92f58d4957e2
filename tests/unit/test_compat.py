"""kemi/compat.py: the differences between the Kamailio releases Pushgate runs on."""

from __future__ import annotations

import pytest

from kemi.compat import UNKNOWN, Appended, Compat, Release


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("5.6.3", Release(5, 6, 3)),
        ("6.0.1", Release(6, 0, 1)),
        ("6.1.0-dev2", Release(6, 1, 0)),
        ("5.8", Release(5, 8, 0)),
    ],
)
def test_release_from_version_num(text: str, release: Release) -> None:
    assert Release.parse(text) == release


@pytest.mark.parametrize("text", ["", "kamailio", "six"])
def test_unreadable_version_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        Release.parse(text)


def test_tested_releases() -> None:
    assert Compat(Release(5, 6, 3)).tested and Compat(Release(6, 0, 1)).tested
    assert not Compat(Release(5, 8, 4)).tested and not Compat(UNKNOWN).tested
    assert str(UNKNOWN) == "(unknown)" and str(Release(6, 0, 1)) == "6.0.1"


@pytest.mark.parametrize(
    ("release", "rc", "outcome"),
    [
        # 5.6: -1 is both "no call stored" and an internal error (and tsilo logs an ERROR).
        (Release(5, 6, 3), 1, Appended.JOINED),
        (Release(5, 6, 3), -1, Appended.NO_CALL),
        (Release(5, 6, 3), -2, Appended.FAILED),
        # 5.7 and later: -2 is "no call stored", -1 an internal error.
        (Release(6, 0, 1), 1, Appended.JOINED),
        (Release(6, 0, 1), -2, Appended.NO_CALL),
        (Release(6, 0, 1), -1, Appended.FAILED),
        (Release(5, 7, 0), -2, Appended.NO_CALL),
    ],
)
def test_ts_append_return_codes(release: Release, rc: int, outcome: Appended) -> None:
    assert Compat(release).ts_append_outcome(rc) is outcome
