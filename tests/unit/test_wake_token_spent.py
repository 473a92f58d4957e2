"""A wake token is single use on every node: its use leaves a marker, so a copy of the
token replayed late (htable over dmq, to a node that restarts) cannot bring it back."""

from __future__ import annotations

import pytest

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import hooks, pushing  # noqa: E402
from pushgate import wake_token  # noqa: E402

INSTANCE = "<urn:uuid:00000000-0000-4000-8000-000000000001>"
CONTACT = f'<sip:alice@192.0.2.1;ob>;+sip.instance="{INSTANCE}"'


@pytest.fixture
def ksr(monkeypatch: pytest.MonkeyPatch) -> fake_ksr.FakeKSR:
    ksr = fake_ksr.reset()
    monkeypatch.setattr(hooks.ksr_bindings, "fetch", lambda aor: ("alice", []))
    return ksr


def present(ksr: fake_ksr.FakeKSR, token: str) -> bool:
    ksr.pvs[f"$hdr({wake_token.HEADER})"] = token
    return hooks.wake_token_ok([CONTACT], 30)


def test_a_used_token_stays_used_when_a_late_copy_of_it_arrives(
    ksr: fake_ksr.FakeKSR,
) -> None:
    token = wake_token.new_token()
    issued = wake_token.binding_key("alice", INSTANCE)
    ksr.tables.setdefault(pushing.WAKE_TOKENS, {})[token] = issued
    assert present(ksr, token)
    assert token not in ksr.tables[pushing.WAKE_TOKENS]
    # dmq replays the token's "set" after its removal (a node that restarted).
    ksr.tables[pushing.WAKE_TOKENS][token] = issued
    assert not present(ksr, token)


def test_a_misused_token_is_spent_too(ksr: fake_ksr.FakeKSR) -> None:
    token = wake_token.new_token()
    other = wake_token.binding_key("alice", "<urn:uuid:00000000-0000-4000-8000-000000000002>")
    ksr.tables.setdefault(pushing.WAKE_TOKENS, {})[token] = other
    assert not present(ksr, token)  # another device's token
    ksr.tables[pushing.WAKE_TOKENS][token] = wake_token.binding_key("alice", INSTANCE)
    assert not present(ksr, token)
