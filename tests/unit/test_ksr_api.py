"""Every KEMI function kemi/ calls is exported, with that many parameters, by each
Kamailio release Pushgate runs on (lists: tests/ksr_api/, kept current by
tests/e2e/test_ksr_api.py)."""

from __future__ import annotations

import pytest

from testkit.kamailio import KAMAILIO_VERSIONS
from testkit.ksr_api import REPO, calls_in, load

KEMI_FILES = sorted((REPO / "kemi").glob("*.py"))


def test_kemi_calls_kamailio_functions() -> None:
    functions = {c.function for c in calls_in(KEMI_FILES)}
    assert {"tsilo.ts_append_by_contact", "tmx.t_suspend", "KSR.info"} <= functions


@pytest.mark.parametrize("version", KAMAILIO_VERSIONS)
def test_every_ksr_call_is_exported_with_its_arity(version: str) -> None:
    exported = load(version)
    wrong = [
        f"{c.where}: {c.function} with {c.nargs} args"
        + (f" (takes {exported[c.function]})" if c.function in exported else " (not exported)")
        for c in calls_in(KEMI_FILES)
        if exported.get(c.function) != c.nargs
    ]
    assert wrong == [], f"Kamailio {version}"


def test_what_6_0_dropped_or_changed_from_5_6() -> None:
    """6.0 only adds functions: everything 5.6 exports is there with the same parameters."""
    old, new = load("5.6"), load("6.0")
    assert {f: n for f, n in old.items() if new.get(f) != n} == {}
